"""Iteration-level (continuous) batching: rows join and leave at decoding-step boundaries.

The scheduler owns a backend's KV slots and three kinds of rows:

    waiting    admitted to the scheduler, no KV yet (FIFO; background rows after all others,
               and holding at most half the batch's slots)
    filling    at most one row with a long prompt being prefilled, in slot B
    decoding   rows 0..B-1, in slots 0..B-1, each with a sampled token to feed

One `step()` is: drop cancelled rows; one decode forward for all decoding
rows (each with its own clamps via the batch's BatchPlan, its own position,
sampler, stop strings and token budget); then prefill of newcomers until
`prefill_budget` prompt tokens were computed this step; then finished rows
leave and their slots are reused. Prefill: a newcomer first copies the
longest prompt prefix the backend has cached (`PrefixCache`); newcomers whose
rests fit in `prefill_chunk` tokens together are prefilled in one forward
(right-padded: one read of the weights for all, which is what a short
prefill costs), a longer rest goes alone, one chunk per forward (a long
prefill is compute-bound: grouping would only delay the first ones). A prompt's
last forward samples its first token and the row joins the decoding batch.
Running streams thus wait at most about one step's budget for newcomers.

Rows never see each other: clamps are per row, a row without clamps is not
touched, sampling noise comes from each row's own generator, and every
token's computation depends only on its own row (bit for bit with
batch-invariant matrix products, see `steering.engine.llama.kernels`; else up to float
rounding). The BatchPlan is rebuilt whenever the decoding rows change.

This module knows nothing of threads or HTTP (see `steering.engine.worker`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from torch import Tensor

from steering.engine.backends import Backend
from steering.engine.detokenize import TextStream
from steering.engine.readout import Readout, RowReader
from steering.engine.requests import SequenceRequest, TokenEvent
from steering.engine.sampling import RowSampler, token_logprobs
from steering.errors import SteeringError
from steering.interventions import BatchPlan, build_plan
from steering.monitors import validate_monitors
from steering.sae.autoencoder import SparseAutoencoder


@dataclass(eq=False)
class Row:
    """One sequence's decoding state."""

    request: SequenceRequest
    owner: Any  # whoever submitted it (the engine's handle); compared by identity
    index: int  # position within the owner's group
    plan: BatchPlan | None  # this row alone (its prefill; the HF path's decode; a steer monitor's clamps join it)
    sampler: RowSampler
    stream: TextStream
    prefilled: int = 0  # prompt tokens whose K/V are stored
    length: int = 0  # tokens whose K/V are stored
    next_token: int | None = None
    count: int = 0  # completion tokens
    finished: bool = False
    reader: RowReader | None = None  # inspection and monitors (steering.engine.readout)

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.request.prompt_ids


def check_request(req: SequenceRequest, sae: SparseAutoencoder | None, max_length: int,
                  vocab_size: int | None = None) -> None:
    """Check one request before it is queued (raises SteeringError naming the parameter).

    Builds no tensors, so a caller on another thread (the server's event loop)
    can run it: the row's BatchPlan is built when it joins the scheduler, on
    the thread that runs the model."""
    req.sampling.validate(vocab_size)
    if not req.prompt_ids:
        raise SteeringError("the prompt is empty", "messages")
    if len(req.prompt_ids) >= max_length:
        raise SteeringError(
            f"the prompt has {len(req.prompt_ids)} tokens; this model's context is {max_length}", "messages"
        )
    if req.reads and sae is None:
        raise SteeringError("this server has no SAE loaded; there are no features to read", "steering")
    if req.inspect is not None:
        req.inspect.validate(sae, "steering.inspect")  # type: ignore[arg-type]
    if req.monitors:
        validate_monitors(req.monitors, sae, "steering.monitors")  # type: ignore[arg-type]
    spec = req.steering
    if spec is None or spec.is_empty:
        return
    if sae is None:
        raise SteeringError("this server has no SAE loaded; steering is unavailable", "steering")
    spec.validate(sae)


def _own_plan(req: SequenceRequest, sae: SparseAutoencoder | None) -> BatchPlan | None:
    """The row's clamps alone (used for its prefill); None without clamps."""
    spec = req.steering
    if sae is None or spec is None or spec.is_empty:
        return None
    return build_plan(sae, [spec], [len(req.prompt_ids)])


def _variant(row: Row) -> object:
    """What a row's prompt K/V depend on besides its tokens: its clamps, if they act on the prompt."""
    spec = row.request.steering
    return None if spec is None else spec.prompt_variant


class Scheduler:
    """Continuous batching over one backend (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        tokenizer: Any,
        sae: SparseAutoencoder | None,
        eos_ids: Iterable[int],
        max_batch: int = 8,
        prefill_chunk: int = 64,
        prefill_budget: int = 64,
    ):
        if max_batch <= 0 or prefill_chunk <= 0:
            raise ValueError("max_batch and prefill_chunk must be positive")
        self.backend, self.tokenizer, self.sae = backend, tokenizer, sae
        self.eos = frozenset(eos_ids)
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self.max_background = max(1, max_batch // 2)  # slots background rows may hold at once
        self.prefill_budget = max(prefill_budget, prefill_chunk)
        self.waiting: deque[Row] = deque()
        self.filling: Row | None = None
        self.decoding: list[Row] = []
        self._plan: BatchPlan | None = None
        self._plan_rows: list[Row] | None = None
        self.readout = Readout(sae) if sae is not None else None

    # ------------------------------------------------------------ admission
    def add(self, requests: Iterable[SequenceRequest], owner: Any = None, checked: bool = False) -> list[Row]:
        """Queue rows (checked here unless `checked`; their plans built here); returns them."""
        requests = list(requests)
        if not checked:
            for r in requests:
                check_request(r, self.sae, self.backend.max_length, self.backend.vocab_size)
        rows = []
        device = getattr(self.backend, "device", None)
        for i, req in enumerate(requests):
            sampler = RowSampler.create(req.sampling, device, req.prompt_ids, self.eos)
            reader = self.readout.reader(req) if self.readout is not None else None
            rows.append(Row(req, owner, i, _own_plan(req, self.sae), sampler,
                            TextStream(self.tokenizer, req.sampling.stop), reader=reader))
        for row in rows:  # background rows wait behind every other row (FIFO within each kind)
            if row.request.background or not self.waiting or not self.waiting[-1].request.background:
                self.waiting.append(row)
            else:
                first = next(k for k, r in enumerate(self.waiting) if r.request.background)
                self.waiting.insert(first, row)
        return rows

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.filling or self.decoding)

    @property
    def active_rows(self) -> int:
        return len(self.decoding) + (self.filling is not None)

    def waiting_owners(self) -> set[int]:
        """ids of owners with rows not yet started (still counted against the queue)."""
        return {id(r.owner) for r in self.waiting}

    # ------------------------------------------------------------ one step
    def step(self, is_cancelled: Callable[[Any], bool] | None = None) -> list[tuple[Row, TokenEvent]]:
        """Run one decoding step (see the module docstring); returns (row, event) pairs."""
        out: list[tuple[Row, TokenEvent]] = []
        if is_cancelled is not None:
            self._drop_cancelled(is_cancelled, out)
        if self.decoding:
            rows = self.decoding
            read = [i for i, r in enumerate(rows) if r.reader is not None]
            logits, sites = self.backend.decode(
                [r.next_token for r in rows], [r.length for r in rows], self._decode_plan(), [r.plan for r in rows], read
            )
            if read:
                self._release([rows[i] for i in read], sites, out)
            greedy = _greedy_tokens(rows, logits)
            for i, row in enumerate(rows):
                row.length += 1
                if row.finished:  # a reading row that only had its last token read, or a stop monitor's
                    continue
                event = self._choose(row, logits[i], greedy[i])
                if event is not None:
                    out.append((row, event))
        self._prefill(out)
        self._reap()
        if self.idle:
            self.backend.release()
        return out

    def cancel_all(self) -> list[tuple[Row, TokenEvent]]:
        """End every row with a "cancelled" event (engine shutdown)."""
        out: list[tuple[Row, TokenEvent]] = []
        self._drop_cancelled(lambda owner: True, out)
        self.backend.release()
        return out

    def _release(self, rows: list[Row], sites: list[Tensor], out: list) -> None:
        """Reading rows fed their held token: release each held event with its reading (module readout)."""
        positions = [[r.length] for r in rows]
        readings, values = self.readout.read([r.reader for r in rows], sites, positions, [[r.next_token] for r in rows])
        for row, reading, value in zip(rows, readings, values):
            event, stopped = row.reader.release(reading[0] if reading else None, value[0] if value else (),
                                                row.count - 1, row.length)
            out.append((row, event))
            row.finished = stopped or row.reader.finishing
            if row.reader.plan_changed:  # a steer monitor fired: its clamps join the next forward's plans
                row.reader.plan_changed = False
                row.plan = build_plan(self.sae, [row.request.steering], [len(row.prompt)], [row.reader.triggered])
                self._plan_rows = None

    def _drop_cancelled(self, is_cancelled: Callable[[Any], bool], out: list) -> None:
        def gone(row: Row) -> bool:
            if not is_cancelled(row.owner):
                return False
            row.finished = True
            out.append((row, TokenEvent(row.index, None, "", finish_reason="cancelled", completion_tokens=row.count)))
            return True

        self.waiting = deque(r for r in self.waiting if not gone(r))
        if self.filling is not None and gone(self.filling):
            self.filling = None
        for row in self.decoding:
            gone(row)
        self._reap()

    def _prefill(self, out: list) -> None:
        """Prefill newcomers until this step's budget is spent (see the module docstring)."""
        budget = self.prefill_budget
        while budget > 0:
            if self.filling is not None:  # a long prompt, one chunk per forward
                row = self.filling
                end = min(len(row.prompt), (row.prefilled // self.prefill_chunk + 1) * self.prefill_chunk)
                budget -= end - row.prefilled
                self._prefill_rows([row], [end], out)
                continue
            group: list[Row] = []  # newcomers whose rests fit in one chunk together: one forward for all
            tokens = 0
            while self.waiting and len(self.decoding) + len(group) < self.max_batch and budget > 0:
                if self.waiting[0].request.background and self._background(group) >= self.max_background:
                    break  # the rest of the queue is background too: half the slots stay for clients
                row = self.waiting.popleft()
                # A row that reads its prompt computes all of it: a reused prefix has no activations to read.
                reuse = row.reader is None or not row.reader.reads_prompt
                slot = len(self.decoding) + len(group)
                row.prefilled = row.length = self.backend.reuse_prefix(slot, row.prompt, _variant(row)) if reuse else 0
                rest = len(row.prompt) - row.prefilled
                if group and (rest > self.prefill_chunk or tokens + rest > self.prefill_chunk):
                    self.waiting.appendleft(row)  # its slot comes free once the group has joined
                    break
                if rest > self.prefill_chunk:
                    self.filling = row
                    break
                group.append(row)
                tokens += rest
                budget -= rest
            if not group:
                if self.filling is None:
                    return
                continue
            self._prefill_rows(group, [len(r.prompt) for r in group], out)

    def _background(self, group: list[Row]) -> int:
        rows = [*self.decoding, *group] + ([self.filling] if self.filling is not None else [])
        return sum(r.request.background for r in rows)

    def _prefill_rows(self, rows: list[Row], ends: list[int], out: list) -> None:
        """One prefill forward of rows (in slots B, B+1, ...) up to ends; finished prompts join decoding."""
        slot0 = len(self.decoding)
        plan = None
        if self.sae is not None and any(r.plan is not None for r in rows):
            plan = rows[0].plan if len(rows) == 1 else build_plan(self.sae, [r.request.steering for r in rows], [len(r.prompt) for r in rows])
        read = [i for i, r in enumerate(rows) if r.reader is not None and r.reader.reads_prompt]
        logits, sites = self.backend.prefill(
            slot0, [r.prompt[r.prefilled : e] for r, e in zip(rows, ends)], [r.prefilled for r in rows], plan,
            [r.plan for r in rows], read
        )
        if read:
            self._read_prompts([rows[i] for i in read], [ends[i] for i in read], sites)
        for i, (row, end) in enumerate(zip(rows, ends)):
            row.prefilled = row.length = end
            if end < len(row.prompt):
                continue
            self.backend.remember_prefix(slot0 + i, row.prompt, _variant(row))
            if row is self.filling:
                self.filling = None
            self.decoding.append(row)
            event = self._choose(row, logits[i])
            if event is not None:
                out.append((row, event))

    def _read_prompts(self, rows: list[Row], ends: list[int], sites: list[Tensor]) -> None:
        """Prompt readings of rows inspecting all positions (position 0, an attention sink, never read)."""
        positions = [list(range(r.prefilled, e)) for r, e in zip(rows, ends)]
        keep = [[k for k, p in enumerate(pos) if p > 0] for pos in positions]
        sites = [s[k] for s, k in zip(sites, keep)]
        positions = [[pos[k] for k in ks] for pos, ks in zip(positions, keep)]
        readings, _ = self.readout.read([r.reader for r in rows], sites, positions,
                                        [[r.prompt[p] for p in pos] for r, pos in zip(rows, positions)])
        for row, got in zip(rows, readings):
            row.reader.prompt.extend(got)

    def _reap(self) -> None:
        """Finished decoding rows leave; the last row moves into each freed slot."""
        for i in range(len(self.decoding) - 1, -1, -1):
            if not self.decoding[i].finished:
                continue
            last = len(self.decoding) - 1
            if i != last:
                self.backend.move(last, i, self.decoding[last].length)
                self.decoding[i] = self.decoding[last]
            self.decoding.pop()
            if self.filling is not None:
                self.backend.move(last + 1, last, self.filling.prefilled)

    def _decode_plan(self) -> BatchPlan | None:
        if self.sae is None:
            return None
        if self._plan_rows != self.decoding:
            self._plan_rows = list(self.decoding)
            triggered = [r.reader.triggered if r.reader is not None else () for r in self.decoding]
            if all(r.plan is None for r in self.decoding) and not any(triggered):
                self._plan = None
            else:
                specs = [r.request.steering for r in self.decoding]
                self._plan = build_plan(self.sae, specs, [len(r.prompt) for r in self.decoding], triggered)
        return self._plan

    # ------------------------------------------------------------ sampling
    def _choose(self, row: Row, logits: Tensor, greedy: int | None = None) -> TokenEvent | None:
        """Sample row's next token from its logits [V] (`greedy`: its argmax, already taken) and turn it into an
        event; a reading row's token event is held until its reading (None now)."""
        event = self._sample(row, logits, greedy)
        if row.reader is None or event.token_id is None:
            return event
        row.reader.hold(event)
        row.finished = False  # one more forward reads the last token
        return None

    def _sample(self, row: Row, logits: Tensor, greedy: int | None = None) -> TokenEvent:
        params = row.request.sampling
        token = greedy if greedy is not None and row.sampler.raw_greedy else row.sampler.choose(logits)
        logprob, top = None, ()
        if params.logprobs:
            lp, best = token_logprobs(logits, token, params.top_logprobs)
            logprob, top = lp, tuple(best)
        if token in self.eos and not params.ignore_eos:
            row.finished = True
            return TokenEvent(row.index, None, row.stream.flush(), finish_reason="stop", completion_tokens=row.count)
        row.count += 1
        row.sampler.observe(token)
        row.next_token = token
        text = row.stream.push(token)
        if row.stream.stopped:
            row.finished = True
            return TokenEvent(row.index, token, text, logprob, top, "stop", row.count)
        if row.count >= params.max_tokens or len(row.prompt) + row.count >= self.backend.max_length:
            row.finished = True
            return TokenEvent(row.index, token, text + row.stream.flush(), logprob, top, "length", row.count)
        return TokenEvent(row.index, token, text, logprob, top, None, row.count)


def _greedy_tokens(rows: Sequence[Row], logits: Tensor) -> list[int | None]:
    """Every row's argmax in one call (one per row costs ~0.1 ms each here), used by rows that are greedy
    on raw logits; None for all when no row is."""
    if not any(r.sampler.raw_greedy for r in rows):
        return [None] * len(rows)
    return logits.argmax(dim=-1).tolist()
