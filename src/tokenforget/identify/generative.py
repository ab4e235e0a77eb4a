"""The generative identifier: an instruction-following LLM lists the unwanted words of each answer.

Backends: any OpenAI-compatible chat endpoint through the official `openai` client (`base_url`,
model, API key read from an environment variable and never logged; the client retries timeouts,
429 and 5xx with exponential backoff), or an in-process Hugging Face instruct model.

The prompt follows the TIF paper's description (docs/methods.md 1c; the exact published wording was not
available, so this is a reconstruction): list the words that directly answer the question (proper
nouns, technical terms, specific concepts, roles, occupations, places), the author's name only when
the question asks for it, no contextual words; reply with JSON. The reply is parsed strictly; a reply
that is not valid JSON gets one repair request. Every target word becomes a span at *every*
whole-word occurrence in the answer. Replies are cached per sample on disk (keyed by the model, the
prompt version, the sample and the run index), so an interrupted run resumes and no sample is sent
twice; `runs=k` labels the set k times (temperature > 0) and reports the Jaccard stability.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenforget.data.records import Sample, word_spans
from tokenforget.identify.identifiers import labelled

PROMPT_VERSION = "tif-generative-1"
SYSTEM = (
    "You label training data for machine unlearning. Given a question and its answer, list the words "
    "or phrases of the ANSWER that directly answer the question and carry its specific information: "
    "proper nouns, names of people, works and organisations, technical terms, specific concepts, "
    "roles, occupations, places, dates and specific numbers. Include the author's name only if the "
    "question asks for it. Do not list contextual or general words (articles, auxiliary verbs, "
    "generic phrasing such as 'was born in'). Copy each item exactly as it appears in the answer.\n"
    'Reply with JSON only, in this form: {"target_words": ["...", "..."]}'
)
REPAIR = (
    'Your reply was not valid JSON of the form {"target_words": ["..."]}. Reply again with that JSON '
    "object only, no other text."
)


class ReplyError(ValueError):
    """A reply that is not the JSON we asked for."""


def parse_reply(text: str) -> list[str]:
    """The target words of a reply: {"target_words": [...]} or a list holding such an object.

    Strict: a code fence around the JSON is accepted, anything else that is not this JSON is an error.
    """
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ReplyError(f"not JSON ({exc.msg} at column {exc.colno})") from exc
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or "target_words" not in data:
        raise ReplyError("no target_words key")
    words = data["target_words"]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise ReplyError("target_words is not a list of strings")
    return [w for w in words if w.strip()]


def user_message(sample: Sample) -> str:
    return json.dumps({"question": sample.question or "", "answer": sample.answer}, ensure_ascii=False)


Chat = Callable[[list[dict[str, str]]], str]


class SampleRejected(Exception):
    """The endpoint refused one request (400/404/413/422: too long, bad content): that sample fails,
    the others go on."""


def openai_chat(
    base_url: str,
    model: str,
    api_key_env: str | None,
    timeout: float,
    max_retries: int,
    temperature: float,
    max_tokens: int = 512,
) -> Chat:
    """A chat function over an OpenAI-compatible endpoint (the official client: retries timeouts,
    429 and 5xx with exponential backoff). Authentication failures stop the run with a clear error."""
    import openai

    from tokenforget.errors import ConfigError

    key = os.environ.get(api_key_env, "") if api_key_env else ""
    client = openai.OpenAI(
        base_url=base_url, api_key=key or "not-needed", timeout=timeout, max_retries=max_retries
    )

    def chat(messages: list[dict[str, str]]) -> str:
        try:
            reply = client.chat.completions.create(
                model=model, messages=messages, temperature=temperature, max_tokens=max_tokens
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ConfigError(
                f"{base_url} refused the API key (HTTP {exc.status_code}). Fix: put a valid key in "
                f"${api_key_env or 'OPENAI_API_KEY'} (set identify.api_key_env to name another variable)"
            ) from None
        except openai.APIStatusError as exc:
            if exc.status_code in (400, 404, 413, 422):
                raise SampleRejected(f"HTTP {exc.status_code}: {str(exc.message)[:200]}") from None
            raise
        return reply.choices[0].message.content or ""

    return chat


def local_chat(model: Any, tokenizer: Any, precision: Any, max_new_tokens: int = 128) -> Chat:
    """A chat function over an in-process Hugging Face instruct model (greedy)."""
    from tokenforget.forward.generation import generate_greedy

    def chat(messages: list[dict[str, str]]) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return generate_greedy(model, tokenizer, [ids], precision, max_new_tokens, 1)[0]

    return chat


@dataclass
class Generative:
    """UW words listed by an instruction-following LLM, cached per sample, concurrent."""

    chat: Chat
    model_name: str
    cache: Path | None = None
    concurrency: int = 4
    name: str = "generative"
    failures: list[dict[str, Any]] = field(default_factory=list)

    def settings(self) -> dict[str, Any]:
        return {"model": self.model_name, "prompt": PROMPT_VERSION}

    def _key(self, sample: Sample, run: int) -> str:
        payload = [PROMPT_VERSION, self.model_name, sample.question, sample.answer, run]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]

    def _ask(self, sample: Sample, run: int) -> dict[str, Any]:
        path = self.cache / f"{self._key(sample, run)}.json" if self.cache else None
        if path is not None and path.is_file():
            return json.loads(path.read_text())
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user_message(sample)}]
        record: dict[str, Any] = {"replies": []}
        try:
            first = self.chat(messages)
            record["replies"].append(first)
            try:
                record["target_words"] = parse_reply(first)
            except ReplyError as exc:
                retry = [
                    *messages,
                    {"role": "assistant", "content": first},
                    {"role": "user", "content": REPAIR},
                ]
                second = self.chat(retry)
                record["replies"].append(second)
                try:
                    record["target_words"] = parse_reply(second)
                except ReplyError as again:
                    record["error"] = f"{exc}; after one repair request: {again}"
        except SampleRejected as exc:
            record["error"] = f"the endpoint rejected the request: {exc}"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{id(record)}")
            tmp.write_text(json.dumps(record, ensure_ascii=False))
            tmp.replace(path)
        return record

    def identify(self, samples: Sequence[Sample], run: int = 0) -> list[Sample]:
        from tokenforget.progress import task_progress

        with (
            ThreadPoolExecutor(max_workers=self.concurrency) as pool,
            task_progress(f"{self.name} identifier", len(samples)) as bar,
        ):
            futures = [pool.submit(self._ask, s, run) for s in samples]
            records = []
            for future in futures:
                records.append(future.result())
                bar.advance(bar.task_ids[0], 1)
        out = []
        for sample, record in zip(samples, records, strict=True):
            if "error" in record:
                self.failures.append({"id": sample.id, "error": record["error"]})
                out.append(labelled(sample, []))
                continue
            words = record["target_words"]
            spans = word_spans(sample.answer, words)
            missing = [w for w in words if not word_spans(sample.answer, [w])]
            result = labelled(sample, spans)
            if missing:
                result.meta["target_words_not_in_answer"] = missing
            out.append(result)
        return out
