"""Sizes and repetitions of one benchmark run: a frozen :class:`Config` with presets full, quick and smoke."""

from __future__ import annotations

import dataclasses

from experiments.bench.registry import SECTIONS as _REGISTRY

__all__ = ["SECTIONS", "Config"]

SECTIONS = tuple(_REGISTRY)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Sizes and repetitions of one benchmark run (frozen; presets ``full``, ``quick``, ``smoke``).

    Model tuples are ``(d_model, n_heads, n_layers, d_ff, vocab)``.
    """

    name: str
    sections: tuple[str, ...] = SECTIONS
    rounds: int  # interleaved timing rounds per comparison
    budget_s: float  # a comparison stops after this many seconds (at least min(3, rounds) rounds)
    copy_mb: int  # size of the bandwidth probe
    # loss + grad
    loss_sizes: tuple[tuple[int, int], ...]  # (rows = B * G, T)
    loss_group: int = 8
    peers: bool = True
    profile: bool = True  # loss: always; other sections: where a goal is missed
    # decomposition
    decomp_group: int = 16
    decomp_len: int = 64
    decomp_prompt: int = 8
    decomp_depth: int = 6  # depth subsets; contributions K = 2 + depth (shared, divergent, per depth)
    decomp_model: tuple[int, int, int, int, int] = (64, 4, 2, 256, 64)
    decomp_chunk: int = 32  # tokens per vmapped VJP chunk of the per-token baseline
    decomp_vjp_chunk: int | None = None  # decompose's chunk of cotangents per vmapped VJP (None: all at once)
    # None: the per-token baseline is timed whole; else this many chunks are timed and the ratio
    # is an extrapolation, labelled as such in bench.json, bench.md and the README.
    decomp_chunks_timed: int | None = None
    # sweeps
    sweep_settings: int = 10_000
    sweep_steps: tuple[int, int] = (20, 10)  # (T gradient steps, K zero-gradient steps)
    sweep_loop_settings: int = 10
    group_sweep_settings: int = 10_000
    group_sweep_steps: int = 8
    group_loop_settings: int = 5
    # the vmapped GRPO inner loop runs as lax.map over chunks of this many settings (each chunk vmapped):
    # one jitted call for every setting, with per-step arrays of ~1-4 MB instead of tens of MB
    group_sweep_chunk: int = 250
    # train step
    train_shape: tuple[int, int, int, int] = (1, 16, 64, 16)  # (B, G, T, P)
    train_model: tuple[int, int, int, int, int] = (256, 4, 4, 1024, 128)
    matmul_n: int = 2048  # the reference matmul on CPU (at least 8192 on an accelerator)
    # scaling
    scale_loss: tuple[int, int, int] = (16, 8, 512)  # (B, G, T) base of the loss+grad scaling
    scale_factors: tuple[int, ...] = (2,)
    scale_train_model: tuple[int, int, int, int, int] = (128, 4, 2, 512, 64)
    # shared-prompt compute: (B, G, T, P), and the Qwen2-layout model (hidden, heads, kv_heads, layers, mlp, vocab)
    share_shape: tuple[int, int, int, int] = (1, 16, 256, 1024)
    share_model: tuple[int, int, int, int, int, int] = (64, 4, 2, 2, 256, 512)
    # Qwen2.5-shaped small model through the real train step and decompose: (B, G, T, P) and the model as above
    hf_shape: tuple[int, int, int, int] = (1, 8, 64, 32)
    hf_model: tuple[int, int, int, int, int, int] = (256, 4, 2, 4, 1024, 4096)

    def __post_init__(self) -> None:
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"Config.sections must be among {SECTIONS}, got {sorted(unknown)}")
        for name in (
            "rounds",
            "copy_mb",
            "loss_group",
            "decomp_chunk",
            "sweep_settings",
            "matmul_n",
            "group_sweep_chunk",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Config.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.decomp_vjp_chunk is not None and self.decomp_vjp_chunk < 1:
            raise ValueError(f"Config.decomp_vjp_chunk must be None or >= 1, got {self.decomp_vjp_chunk!r}")
        if self.decomp_chunks_timed is not None and self.decomp_chunks_timed < 1:
            raise ValueError(f"Config.decomp_chunks_timed must be None or >= 1, got {self.decomp_chunks_timed!r}")
        for rows, _ in self.loss_sizes:
            if rows % self.loss_group:
                raise ValueError(
                    f"Config.loss_sizes rows must be multiples of loss_group={self.loss_group}, got {rows}"
                )

    @classmethod
    def full(cls) -> Config:
        """The run the README quotes: every ratio measured whole (the per-token baseline too)."""
        return cls(
            name="full",
            rounds=7,
            budget_s=45.0,
            copy_mb=256,
            loss_sizes=((128, 1024), (1024, 4096)),
            decomp_chunks_timed=None,
            sweep_loop_settings=20,
            group_loop_settings=10,
            train_shape=(2, 16, 64, 16),
            scale_factors=(2, 4),
        )

    @classmethod
    def quick(cls) -> Config:
        """A few minutes on a CPU; the per-token baseline is extrapolated from one chunk (and labelled so)."""
        return cls(
            name="quick",
            rounds=4,
            budget_s=6.0,
            copy_mb=256,
            loss_sizes=((128, 1024), (256, 2048)),
            decomp_chunks_timed=1,
            sweep_loop_settings=5,
            group_sweep_settings=2000,
            group_loop_settings=4,
            share_shape=(1, 16, 128, 512),  # half of P = 1024, T = 256: the same G (P + T) / (P + G T) = 4
        )

    @classmethod
    def smoke(cls) -> Config:
        """Trivial sizes for the smoke test: exercises every code path, measures nothing."""
        return cls(
            name="smoke",
            rounds=1,
            budget_s=1.0,
            copy_mb=1,
            loss_sizes=((8, 16),),
            loss_group=4,
            peers=False,
            decomp_group=4,
            decomp_len=8,
            decomp_prompt=2,
            decomp_depth=2,
            decomp_model=(16, 2, 1, 32, 16),
            decomp_chunk=4,
            decomp_vjp_chunk=2,  # the smoke run exercises decompose's chunked path
            decomp_chunks_timed=2,
            sweep_settings=64,
            group_sweep_settings=32,
            sweep_steps=(3, 2),
            sweep_loop_settings=1,
            group_sweep_steps=2,
            group_loop_settings=1,
            group_sweep_chunk=8,
            train_shape=(1, 4, 8, 2),
            train_model=(16, 2, 1, 32, 16),
            matmul_n=64,
            scale_loss=(2, 4, 8),
            scale_factors=(2,),
            scale_train_model=(16, 2, 1, 32, 16),
            share_shape=(1, 4, 8, 16),
            share_model=(16, 2, 1, 1, 32, 32),
            hf_shape=(1, 4, 8, 4),
            hf_model=(16, 2, 1, 1, 32, 32),
        )
