"""Evaluation: TOFU, MUSE, membership attacks, KL and token-level metrics over the forward's statistics."""

from tokenforget.evaluate.metrics import mean, rouge_recall
from tokenforget.forward.generation import answer_questions, generate_greedy

__all__ = ["answer_questions", "generate_greedy", "mean", "rouge_recall"]
