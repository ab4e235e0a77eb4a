"""Evaluation: generation and ROUGE, and TOFU metrics faithful to the published aggregation."""

from tokenforget.evaluate.generation import answer_questions, generate_greedy, mean, rouge_recall

__all__ = ["answer_questions", "generate_greedy", "mean", "rouge_recall"]
