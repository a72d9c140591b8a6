"""The one interface every policy (student or teacher) exposes to rollout, scoring and training.

Why embeddings: a speech LLM's prompt is text with audio frames spliced in, so it has no token ids.
Every model here therefore turns a batch of prompts into *left-padded input embeddings*; rollout
appends sampled token embeddings to them, and scoring appends the response's token embeddings.
The same three functions (embed prompts, embed tokens, run the causal LM on embeddings) serve a
text teacher, our own ``SpeechLLM`` and transformers' own speech LLM classes.

Layout of every sequence the models see::

    [pad ... pad | prompt tokens/frames | response tokens | pad ... pad]
     <- left-padded prompt, width P ->   <- right-padded response, width L ->

Position ids are always ``cumsum(attention_mask) - 1`` so that a prompt's positions do not depend on
how much padding its batch needed: generation and scoring see identical positions.
"""

from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from xopd.errors import ModelError

VIEWS = ("S", "T")
ROLES = ("user", "assistant")


@dataclass
class Turn:
    """One earlier turn of a conversation (:attr:`Prompt.history`).

    A ``user`` turn carries ``text`` (T view: the transcript; S view: an optional instruction) and/or
    ``audio`` (S view: the spoken turn, 16 kHz mono float32); an ``assistant`` turn carries ``text``.
    """

    role: str
    text: str | None = None
    audio: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Turn.role must be one of {ROLES}, got {self.role!r}")
        if self.role == "assistant" and (self.audio is not None or self.text is None):
            raise ValueError("an assistant turn needs text and no audio")
        if self.role == "user" and self.audio is None and not (self.text or "").strip():
            raise ValueError("a user turn needs text or audio")


@dataclass
class Prompt:
    """The user turn to answer, optionally after a conversation ``history``.

    ``view == "T"``: ``text`` is the written prompt (transcript T), ``audio`` is None.
    ``view == "S"``: ``audio`` is the spoken prompt (16 kHz mono float32); ``text`` is an optional
    instruction that accompanies the audio (e.g. "Is the speaker fast or slow?"), usually None.
    ``history``: earlier turns, oldest first (multi-turn benchmarks). In the T view every user turn
    is text (the transcripts: what the text teacher sees); in the S view user turns may carry audio,
    spliced at one audio placeholder per turn. An empty history is the single-turn prompt, rendered
    exactly as before.
    """

    text: str | None
    audio: np.ndarray | None = None
    view: str = "T"
    system: str | None = None
    history: list[Turn] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"Prompt.view must be one of {VIEWS}, got {self.view!r}")
        if self.view == "S" and self.audio is None:
            raise ValueError("a speech-view (S) prompt needs audio")
        if self.view == "T" and not (self.text or "").strip():
            raise ValueError("a text-view (T) prompt needs non-empty text")
        if self.view == "T" and any(t.audio is not None for t in self.history):
            raise ValueError("a text-view (T) prompt's history must be text only (use the transcripts)")


@dataclass
class PromptBatch:
    """Left-padded prompt embeddings: ``embeds [B, P, D]``, ``attention_mask [B, P]`` (long)."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor

    def repeat_interleave(self, n: int) -> PromptBatch:
        """Each prompt n times in a row (rollout order: prompt0 x n, prompt1 x n, ...)."""
        if n == 1:
            return self
        return PromptBatch(self.embeds.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0))


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask -> [B, T] positions counting only real tokens (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(seqs: Sequence[torch.Tensor]) -> PromptBatch:
    """Stack [T_i, D] tensors into a left-padded [B, max T, D] batch with its mask."""
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    width = max(s.shape[0] for s in seqs)
    d = seqs[0].shape[-1]
    ref = seqs[0]
    embeds = ref.new_zeros(len(seqs), width, d)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=ref.device)
    for i, s in enumerate(seqs):
        embeds[i, width - s.shape[0] :] = s
        mask[i, width - s.shape[0] :] = 1
    return PromptBatch(embeds, mask)


@lru_cache(maxsize=64)
def cache_kwarg(forward_cls: type) -> str:
    """transformers 5 renamed ``past_key_values`` to ``cache``: use whichever the class takes."""
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def causal_lm_forward(
    lm: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cache=None,
    use_cache: bool = False,
    logits_to_keep: int = 0,
):
    """Run an HF causal LM on embeddings; returns ``(logits, cache)``.

    ``logits_to_keep=k`` computes the LM head only on the last k positions (scoring needs only the
    response positions, which are always last).
    """
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)
        if cache is not None:
            position_ids = position_ids[:, -inputs_embeds.shape[1] :]
    kwargs = dict(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=use_cache,
    )
    if cache is not None:
        kwargs[cache_kwarg(type(lm))] = cache
    if logits_to_keep:
        kwargs["logits_to_keep"] = logits_to_keep
    out = lm(**kwargs)
    new_cache = getattr(out, "cache", None)
    if new_cache is None:
        new_cache = getattr(out, "past_key_values", None)
    return out.logits, new_cache


class PolicyModel(nn.Module, ABC):
    """What rollout, scoring and the trainer need from a model.

    Subclasses: :class:`xopd.models.text_lm.TextLM` (teachers, text students), ``SpeechLLM`` and
    the transformers speech-LLM adapters.
    """

    tokenizer: object  # a transformers tokenizer
    #: the CTC front end of a ``SpeechLLM`` that has one (models/adapter.py), else None. Declared, not
    #: defaulted, here: a class-level None would shadow the submodule nn.Module registers on assignment,
    #: so every concrete model sets it (``SpeechLLM`` in ``__init__``, the others as a class attribute).
    adapter: nn.Module | None
    #: scoring may run each prompt once for its n responses: the LM returns a KV cache that gradients
    #: flow through (generation/logits.py); a model that cannot sets this False and prompts are repeated
    shared_prompt_ok: bool = True
    #: sampling may preallocate a ``transformers.StaticCache`` (generation/kv_cache.py)
    static_cache_ok: bool = True

    # -- must implement -------------------------------------------------------------------------
    @abstractmethod
    def causal_lm(self) -> nn.Module:
        """The transformers module whose ``forward`` takes ``inputs_embeds`` and returns logits."""

    @abstractmethod
    def embed_prompts(self, prompts: Sequence[Prompt]) -> PromptBatch:
        """Chat-template each prompt, embed it (splicing audio where the view is S), left-pad."""

    @abstractmethod
    def save_pretrained(self, path: str) -> None:
        """Write a directory that the matching loader reads back exactly."""

    # -- override where the model has the part ---------------------------------------------------
    def freeze(self, encoder: bool = True, projector: bool = True, lm: bool = False,
               adapter: bool = True) -> PolicyModel:
        """Set which parts train; ``True`` = frozen (paper default: only the LLM backbone trains).

        A text model has only its LM; speech models freeze their audio tower, projector and (where
        they have one) CTC adapter as told."""
        self.causal_lm().requires_grad_(not lm)
        return self

    def audio_window_seconds(self) -> float | None:
        """Longest clip one prompt may carry (the audio tower's window), or None if unbounded/unknown."""
        return None

    def enable_encoder_cache(self, max_items: int = 50_000, shared: bool = True,
                             dtype: str | torch.dtype | None = None) -> PolicyModel:
        """Memoise a frozen audio tower's outputs by clip content (``SpeechLLM``); a no-op for models
        without such a tower or whose tower cannot be split off (text LMs, the HF adapters)."""
        return self

    def load_encoder_cache(self, path: str) -> int:
        """Add the clips of a saved encoder cache; returns how many (0: this model keeps no cache)."""
        return 0

    def save_encoder_cache(self, path: str) -> int:
        """Write the encoder cache to ``path``; models without one raise."""
        raise ModelError(f"{type(self).__name__} keeps no encoder cache to save")

    # -- shared ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, D] input embeddings of the causal LM."""
        return self.causal_lm().get_input_embeddings()(ids)

    def forward_embeds(self, inputs_embeds, attention_mask, position_ids=None, cache=None, use_cache=False,
                       logits_to_keep: int = 0):
        return causal_lm_forward(self.causal_lm(), inputs_embeds, attention_mask, position_ids, cache,
                                 use_cache, logits_to_keep)

    @property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends a response: the tokenizer's eos plus the generation config's eos ids."""
        ids: list[int] = []
        gen = getattr(self.causal_lm(), "generation_config", None)
        cand = [getattr(self.tokenizer, "eos_token_id", None), getattr(gen, "eos_token_id", None)]
        for c in cand:
            for i in c if isinstance(c, list | tuple) else [c]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        if not ids:
            raise ModelError("model has no eos token: set tokenizer.eos_token or generation_config.eos_token_id")
        return ids

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else self.eos_token_ids[0]

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (may exceed ``len(tokenizer)``: padding for speed)."""
        return int(self.causal_lm().get_output_embeddings().weight.shape[0])

    def chat_ids(self, content: str, system: str | None = None) -> list[int]:
        """Token ids of one user turn in this model's chat template, ready for the assistant reply."""
        return render_chat_ids(self.tokenizer, content, system)

    def text_prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a T-view prompt (with its history, if any) in this model's chat template."""
        if not prompt.history:
            return self.chat_ids(prompt.text or "", prompt.system)
        return render_messages_ids(self.tokenizer, conversation(prompt, lambda text, audio: text or ""))


DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def conversation(prompt: Prompt, user_content: Callable[[str | None, bool], str]) -> list[dict]:
    """Chat messages of ``prompt``: its system prompt, its history, then the turn to answer.

    ``user_content(text, has_audio)`` renders a user turn's content (a speech model puts its audio
    placeholder there); assistant turns are their text. The final turn has audio in the S view.
    """
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    for turn in prompt.history:
        if turn.role == "assistant":
            messages.append({"role": "assistant", "content": turn.text or ""})
        else:
            messages.append({"role": "user", "content": user_content(turn.text, turn.audio is not None)})
    messages.append({"role": "user", "content": user_content(prompt.text, prompt.view == "S")})
    return messages


def n_clips(prompt: Prompt) -> int:
    """Audio clips an S prompt carries: one per spoken history turn, then its own."""
    return 1 + sum(t.audio is not None for t in prompt.history)


def spoken_clips(prompts: Sequence[Prompt]) -> tuple[list[np.ndarray], dict[int, int]]:
    """Every clip of the batch's S prompts in conversation order (history turns first, then the prompt's
    own), and the index of each S prompt's first clip in that list: one encoder pass serves the batch."""
    clips: list[np.ndarray] = []
    first: dict[int, int] = {}
    for i, p in enumerate(prompts):
        if p.view == "S":
            first[i] = len(clips)
            clips += [t.audio for t in p.history if t.audio is not None] + [p.audio]
    return clips, first


def render_chat_ids(tokenizer, content: str, system: str | None = None) -> list[int]:
    """Apply the tokenizer's own chat template to one user turn (+ generation prompt).

    Tokenizers without a chat template are an error rather than a silent guess: the teacher's and
    the student's prompt format is exactly what the distillation signal depends on.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return render_messages_ids(tokenizer, messages)


def render_messages_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Apply the tokenizer's own chat template to a conversation (+ generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat_template: set one "
            "(tokenizer.chat_template = ...; save_pretrained) before using it with xopd"
        )
    # Rendering runs jinja and the tokenizer, and an on-policy step renders every
    # prompt two or three times, so the ids are memoised per tokenizer, keyed by everything they depend on.
    # (Messages whose content is not a string, or tokenizers without weak references, are rendered as is.)
    try:
        key = (tokenizer.chat_template, len(tokenizer), tuple(tuple(sorted(m.items())) for m in messages))
        memo = _RENDERED.setdefault(tokenizer, {})
        ids = memo.get(key)
    except TypeError:
        key, memo, ids = None, None, None
    if ids is None:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        if memo is not None:
            if len(memo) >= _RENDERED_MAX:
                memo.clear()
            memo[key] = ids
    return list(ids)


#: rendered prompt ids per live tokenizer (weak keys: a dropped tokenizer drops its memo)
_RENDERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RENDERED_MAX = 100_000
