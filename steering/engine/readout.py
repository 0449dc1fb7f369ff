"""Reading rows while they generate: inspection and monitors inside the batched forward.

A row that inspects or monitors (`SequenceRequest.reads`) has its
activations at the SAE's site, before any clamp, returned by the backend
for every forward it is in. The features of generated token t are those at
t's own position, so they are known one forward after t was sampled (when t
is fed back): such a row's event for t is held back one step and released
with t's reading; a row that ends by length or a stop string is fed its
last token once more (its logits unused) so that every released token has
its reading. Rows that do not read are never delayed or touched.

Per forward, for the reading rows together:

    inspection  f = SAE.encode(x)  for the inspecting rows' tokens (the full encode), then top-k
    monitors    f_i(x) for the watched features only (their own encoder columns, `encode_features`)

Monitors (`steering.monitors`) fire on a rising crossing; a
`stop` crossing ends the row before the crossing token is released
(`content_filter`). This module knows nothing of threads or HTTP.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from steering.engine.llama import kernels
from steering.engine.requests import SequenceRequest, TokenEvent
from steering.interventions import WindowedClamps
from steering.monitors import Monitor, MonitorEvent
from steering.readings import TokenReading, max_activations, readings
from steering.sae.autoencoder import FeatureColumns, SparseAutoencoder


class RowReader:
    """What one reading row watches, and its held-back event (see the module docstring)."""

    def __init__(self, request: SequenceRequest, sae: SparseAutoencoder):
        self.inspect = request.inspect
        self.monitors: tuple[Monitor, ...] = request.monitors
        self.thresholds = [m.raw_threshold(sae) for m in self.monitors]
        self.above = [False] * len(self.monitors)
        self.held: TokenEvent | None = None  # the last sampled token's event, waiting for its reading
        self.finishing = False  # the held event ends the row: one more forward to read its token
        self.prompt: list[TokenReading] = []  # the prompt's readings, released with the first event
        self.triggered: list[WindowedClamps] = []  # what `steer` monitors added, oldest first
        self.plan_changed = False  # set by a `steer` crossing, cleared by the scheduler

    @property
    def reads_prompt(self) -> bool:
        return self.inspect is not None and self.inspect.positions == "all"

    def hold(self, event: TokenEvent) -> None:
        self.held = event
        self.finishing = event.finish_reason is not None

    def release(self, reading: TokenReading | None, values: Sequence[float], token_index: int,
                position: int) -> tuple[TokenEvent, bool]:
        """The held event with its reading and monitor crossings; True when a stop monitor ends the row
        (the event is then the row's last, `content_filter`, without the crossing token). A `steer`
        crossing adds its clamps to `triggered` (the scheduler rebuilds the row's plan)."""
        held = self.held
        assert held is not None
        self.held = None
        crossings, stop = [], False
        for k, (m, v) in enumerate(zip(self.monitors, values)):
            over = v >= self.thresholds[k]
            if over and not self.above[k]:
                crossings.append(MonitorEvent(m.label, m.index, token_index, position, float(v),
                                              self.thresholds[k], m.action))
                stop = stop or m.action == "stop"
                if m.action == "steer":
                    self.triggered.append(m.window(position))
                    self.plan_changed = True
            self.above[k] = over
        if stop:
            return TokenEvent(held.index, None, "", finish_reason="content_filter",
                              completion_tokens=max(0, held.completion_tokens - 1),
                              readings=tuple(self.prompt), monitor_events=tuple(crossings)), True
        taken = (*self.prompt, reading) if reading is not None else tuple(self.prompt)
        self.prompt = []
        return dataclasses.replace(held, readings=tuple(taken), monitor_events=tuple(crossings)), False


class Readout:
    """The batched reading of one scheduler's rows (one SAE; its max activations read once).

    The full encode's product runs through the C kernels' `linear` where they
    load (a CPU, float32 SAE): torch's CPU matmul re-packs the [d_in, d_sae]
    encoder at every call with more than one row (15 ms for 8 rows of the
    default SAE here, against ~1.5 ms for one read of the weights).
    """

    def __init__(self, sae: SparseAutoencoder):
        self.sae = sae
        self.scale = max_activations(sae)
        self._w_enc_t: Tensor | None = None  # W_enc^T [d_sae, d_in], contiguous, for the kernel (built lazily)
        self._kernels = None
        # The watched features' encoder columns per set of features: gathering them costs more than using them.
        self._columns: dict[tuple[int, ...], FeatureColumns] = {}

    def _watched(self, features: tuple[int, ...]) -> FeatureColumns:
        cols = self._columns.get(features)
        if cols is None:
            if len(self._columns) >= 256:  # many distinct monitor sets: start over rather than grow
                self._columns.clear()
            idx = torch.tensor(features, dtype=torch.long, device=self.sae.W_enc.device)
            cols = self._columns[features] = self.sae.feature_columns(idx)
        return cols

    def _encode(self, x: Tensor) -> Tensor:
        """f = SAE.encode(x) for x [T, d_in], float32 [T, d_sae]."""
        sae = self.sae
        if self._kernels is None:
            usable = sae.W_enc.device.type == "cpu" and sae.W_enc.dtype == torch.float32 and kernels.load() is not None
            self._kernels = kernels if usable else False
            if usable:
                self._w_enc_t = sae.W_enc.detach().T.contiguous()
        if not self._kernels:
            return sae.encode(x.to(sae.W_enc.dtype)).float()
        x_n, _ = sae.normalize(x.float())
        pre = self._kernels.linear(sae.encoder_input(x_n).contiguous(), self._w_enc_t) + sae.b_enc
        return sae.activate(pre).float()

    def reader(self, request: SequenceRequest) -> RowReader | None:
        return RowReader(request, self.sae) if request.reads else None

    @torch.no_grad()
    def read(self, readers: Sequence[RowReader], sites: Sequence[Tensor], positions: Sequence[Sequence[int]],
             token_ids: Sequence[Sequence[int]]) -> tuple[list[list[TokenReading]], list[list[list[float]]]]:
        """Per reader: the readings of its tokens (none without inspect) and the monitored values [T][n]."""
        sae = self.sae
        out_readings: list[list[TokenReading]] = [[] for _ in readers]
        out_values: list[list[list[float]]] = [[[] for _ in pos] for pos in positions]
        inspecting = [k for k, r in enumerate(readers) if r.inspect is not None]
        if inspecting:
            f = self._encode(torch.cat([sites[k] for k in inspecting]))
            start = 0
            for k in inspecting:
                n = sites[k].shape[0]
                out_readings[k] = readings(f[start : start + n], readers[k].inspect, positions[k], token_ids[k],
                                           self.scale)
                start += n
        watching = [k for k, r in enumerate(readers) if r.monitors]
        if watching:
            features = tuple(sorted({m.index for k in watching for m in readers[k].monitors}))
            column = {i: j for j, i in enumerate(features)}
            x = torch.cat([sites[k] for k in watching])
            if sae.supports_sparse_encode:
                v = sae.encode_columns(x, self._watched(features)).float().cpu()
            else:
                idx = torch.tensor(features, dtype=torch.long, device=sae.W_enc.device)
                v = sae.encode_features(x.to(sae.W_enc.dtype), idx).float().cpu()
            start = 0
            for k in watching:
                n = sites[k].shape[0]
                cols = [column[m.index] for m in readers[k].monitors]
                out_values[k] = v[start : start + n, cols].tolist()
                start += n
        return out_readings, out_values
