"""``prunetune`` command line: one function per subcommand, thin over the Python API."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from . import prepare_out
from .errors import PrunetuneError

EXIT_USAGE = 2
#: the shortest heartbeat grace period: one more second than the 5 s heartbeat interval
HEARTBEAT_GRACE_MIN = 6


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) instead of the full usage block."""

    def __init__(self, *a, **kw):
        self.flags: dict[str, list[str]] = {}  # dest -> option strings (see _typed_dests)
        self.commands: dict[str, _Parser] = {}
        super().__init__(*a, **kw)

    def add_argument(self, *a, **kw):
        action = super().add_argument(*a, **kw)
        self.flags[action.dest] = list(action.option_strings)
        return action

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def _m(x: int) -> str:
    return f"{x / 1e6:.3f}"


def _add_model_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    from .models import INTERPOLATIONS

    p.add_argument(
        "--model",
        help="timm model name, hf:DIR (a Hugging Face ViT/DeiT folder) or a JSON/YAML model file "
        "(default: embedded digits_vit)",
    )
    p.add_argument(
        "--checkpoint", help="weights file: .safetensors or .pth (loaded with weights_only)"
    )
    if data:
        p.add_argument(
            "--data",
            help="ImageFolder directory with train/ and val/, or a torchvision data set name",
        )
        p.add_argument(
            "--download", action="store_true", help="allow downloading a torchvision data set"
        )
        p.add_argument("--data-root", help="where torchvision data sets live")
        p.add_argument(
            "--mean",
            nargs="+",
            type=_finite_float,
            metavar="M",
            help="normalisation mean per channel (default: the model's pretrained_cfg)",
        )
        p.add_argument(
            "--std",
            nargs="+",
            type=_std_value,
            metavar="S",
            help="normalisation std per channel (default: the model's pretrained_cfg)",
        )
        p.add_argument(
            "--interpolation",
            choices=INTERPOLATIONS,
            help="resize interpolation (default: the model's pretrained_cfg, else bicubic)",
        )
        p.add_argument(
            "--crop-pct",
            type=_float_type(0.0, 1.0, low_open=True),
            metavar="F",
            help="centre-crop fraction (default: the model's pretrained_cfg, else 1: no crop)",
        )
        p.add_argument(
            "--skip-dense-check",
            action="store_true",
            help="run even when the dense model scores within 5 points of chance on val",
        )
    p.add_argument(
        "--device", default="auto", type=_device, help="auto (CUDA if available), cpu, cuda, cuda:N"
    )


def _preprocessing_args(args) -> dict:
    return {
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
        "check_dense": not args.skip_dense_check,
    }


def _spec_for(args, config=None):
    from .models import resolve_model_spec

    if config is None:
        return resolve_model_spec(args.model)
    if args.model is not None:
        given = resolve_model_spec(args.model)
        if given != config.model:
            made, asked = (
                f"{s.name} {s.kwargs}" if s.kwargs else s.name for s in (config.model, given)
            )
            raise PrunetuneError(
                f"the config was made for model {made} but --model is {asked}; "
                f"drop --model or use a config for it"
            )
    return config.model


def cmd_info(args) -> int:
    from .config import PruningConfig
    from .evaluators import BLOCK_TABLE_HEADER, block_table, estimate_cost, format_macs
    from .models import ViTArch

    config = PruningConfig.load(args.config) if args.config else None
    spec = _spec_for(args, config)
    arch = ViTArch.from_spec(spec)
    config = config or PruningConfig.dense(spec)
    if config.width_mode != "count":
        raise PrunetuneError(
            "info needs a count-mode config; `prunetune prune` resolves thresholds"
        )
    cost = estimate_cost(config, arch)
    print(
        f"model {spec.name} {spec.kwargs or ''}: depth {arch.depth}, dim {arch.embed_dim}, "
        f"{arch.num_heads} heads x {arch.head_dim}, MLP {arch.mlp_hidden}, {arch.num_tokens} tokens"
    )
    print(_table(block_table(config, arch), list(BLOCK_TABLE_HEADER)))
    print(
        f"total: {format_macs(cost.macs)}, {cost.params:,} params ({cost.nonzero_params:,} "
        f"non-zero)"
    )
    return 0


def cmd_prune(args) -> int:
    from . import PruningConfig, apply_config, format_macs

    config = PruningConfig.load(args.config)
    spec = _spec_for(args, config)
    out = prepare_out(args.out, args.overwrite)
    run = apply_config(
        config,
        spec,
        args.checkpoint,
        args.data,
        download=args.download,
        data_root=args.data_root,
        device=args.device,
        calib_samples=args.calib_samples,
        batch_size=args.batch_size,
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        seed=args.seed,
        latency_batch=None if args.no_latency else args.latency_batch,
        threads=args.threads,
        out=out,
        announce=print,
        **_preprocessing_args(args),
    )
    rows = []
    for name, st in run.stages.items():
        lat = (
            "-"
            if st["latency_ms"] is None
            else f"{st['latency_ms']:.2f} ({st['latency_p10_ms']:.2f}-{st['latency_p90_ms']:.2f})"
        )
        rows.append(
            [
                name,
                _m(st["macs"]),
                _m(2 * st["macs"]),
                f"{st['params'] / 1e6:.3f}",
                f"{st['nonzero_params'] / 1e6:.3f}",
                lat,
                f"{100 * st['val_accuracy']:.2f}",
            ]
        )
    d, p = run.dense, run.final
    print(
        _table(
            rows,
            [
                "model",
                "MMACs",
                "MFLOPs",
                "Mparams",
                "Mnonzero",
                f"ms@{args.latency_batch}",
                "val acc %",
            ],
        )
    )
    tuned = (
        f"after {args.finetune_epochs:g} epochs of KD fine-tuning"
        if args.finetune_epochs > 0
        else "no fine-tuning"
    )
    print(
        f"MACs x{p['macs'] / d['macs']:.3f}, params x{p['params'] / d['params']:.3f}"
        + ("" if args.no_latency else f", latency x{p['latency_ms'] / d['latency_ms']:.3f}")
        + f"; accuracy {100 * (p['val_accuracy'] - d['val_accuracy']):+.2f} points ({tuned})"
    )
    print(
        "tokens per block: "
        + " ".join("-" if t is None else str(t) for t in p["tokens"])
        + ("" if not run.config.has_tokens else f" (token_mode {run.config.token_mode})")
    )
    print(f"pruned: {format_macs(p['macs'])}; wrote {out}/config.json and {out}/model.safetensors")
    return 0


def cmd_saliency(args) -> int:
    from . import load_base
    from .pruners import compute_scores, get_saliency

    get_saliency(args.criterion)  # unknown names fail before any work
    spec = _spec_for(args)
    base = load_base(
        spec,
        args.checkpoint,
        args.data,
        args.download,
        args.data_root,
        args.device,
        **_preprocessing_args(args),
        announce=print,
    )
    calib = base.calibration(args.calib_samples, args.batch_size, args.seed)
    s = compute_scores(base.model, args.criterion, calib)
    bmax = float(s.blocks.max()) or 1.0
    rows = []
    for i in range(len(s.heads)):
        h = s.heads[i] / (s.heads[i].max().clamp_min(1e-30))
        m = s.mlp[i] / (s.mlp[i].max().clamp_min(1e-30))
        rows.append(
            [
                i,
                f"{float(s.blocks[i]) / bmax:.3f}",
                " ".join(f"{v:.2f}" for v in h.tolist()),
                f"{float(m.min()):.2f}/{float(m.median()):.2f}",
                f"{int((m >= 0.5).sum())}/{m.numel()}",
            ]
        )
    print(
        f"criterion {s.criterion} on {sum(len(y) for _, y in calib)} calibration images "
        f"(scores normalised by the largest in each row's layer; blocks by the largest block)"
    )
    print(_table(rows, ["block", "block score", "heads", "mlp min/median", "mlp >= 0.5"]))
    return 0


def _study_args(p: argparse.ArgumentParser) -> None:
    from .search import DEFAULT_STORAGE, DEFAULT_STUDY

    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"SQLAlchemy URL of the study storage (default {DEFAULT_STORAGE})",
    )
    p.add_argument(
        "--study",
        default=None,
        help=f"study name (default: {DEFAULT_STUDY}-<budget> for search, "
        f"e.g. {DEFAULT_STUDY}-flops50; "
        f"the storage's only study for the other commands)",
    )


#: ``prunetune search`` flags that map one-to-one onto SearchSettings fields.
_SEARCH_FIELDS = (
    "budget",
    "start",
    "cpu_budget",
    "model",
    "checkpoint",
    "data",
    "download",
    "data_root",
    "space",
    "n_trials",
    "sampler",
    "seed",
    "storage",
    "study",
    "device",
    "calib_samples",
    "batch_size",
    "lr",
    "final_epochs",
    "front_max",
    "artifacts",
    "artifact_store",
    "latency_batch",
    "measure_latency",
    "grace_period",
    "mean",
    "std",
    "interpolation",
    "crop_pct",
    "backend",
    "workers",
    "address",
    "refresh_latency_table",
    "budget_target_low",
)


def _given(args, dest: str) -> bool:
    """Whether the flag behind ``dest`` was typed on the command line (not a default)."""
    return dest in args.given_dests


def _search_settings(args):
    """SearchSettings from ``--config`` (if any), then the flags typed on the command line."""
    from .search import SearchSettings, TierSpec

    base = SearchSettings.load(args.settings_file) if args.settings_file else SearchSettings()
    changes = {f: getattr(args, f) for f in _SEARCH_FIELDS if _given(args, f)}
    if args.mean is not None:
        changes["mean"] = tuple(args.mean)
    if args.std is not None:
        changes["std"] = tuple(args.std)
    if _given(args, "no_final"):
        changes["run_final"] = False
    if _given(args, "skip_dense_check"):
        changes["check_dense"] = False
    if not args.settings_file and "budget" not in changes:
        raise PrunetuneError(
            "search needs --budget (e.g. --budget flops=50%) or a --config "
            "settings file that sets budget"
        )
    tiers = list(changes.pop("tiers", base.tiers))
    for dest, flag in (
        ("tier_b_fraction", "--tier-b-fraction"),
        ("tier_b_steps", "--tier-b-steps"),
    ):
        if not _given(args, dest):
            continue
        if len(tiers) < 2:
            raise PrunetuneError(
                f"{flag} sets the second proxy tier, but the settings have "
                f"{len(tiers)} tier; set the tiers in the --config file instead"
            )
        if dest == "tier_b_fraction":  # the gate after tier a decides what reaches tier b
            tiers[0] = TierSpec(
                tiers[0].proxy, tiers[0].options, args.tier_b_fraction, tiers[0].warmup
            )
        else:
            tiers[1] = TierSpec(
                tiers[1].proxy,
                {**tiers[1].options, "steps": args.tier_b_steps},
                tiers[1].keep,
                tiers[1].warmup,
            )
    changes["tiers"] = tuple(tiers)
    from dataclasses import replace

    return replace(base, **changes)


def cmd_search(args) -> int:
    from .search import TrialRecord, final_of, search, study_entry

    settings = _search_settings(args)
    res = search(settings=settings, progress=not args.quiet, announce=print)
    study = res.study
    dense = study_entry(study, "dense")
    states = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    print(
        f"study {study.study_name} in {res.settings.storage}: "
        + ", ".join(f"{v} {k}" for k, v in sorted(states.items()))
    )
    print(
        f"budget {res.budget.describe()}; dense {dense['macs'] / 1e6:.3f} MMACs, val acc "
        f"{100 * dense['val_accuracy']:.2f} %"
    )
    lt = study_entry(study, "latency_table")
    if lt:
        print(
            f"latency table ({lt['device']}, batch {lt['batch_size']}, {lt['rows']} block "
            f"timings): "
            f"prediction error {lt['prediction_error_pct']:.1f} % on random configurations"
        )
    rows = []
    labels = [f"tier {chr(ord('a') + i)} acc %" for i in range(len(res.settings.tiers))]
    for t in res.front:
        rec = TrialRecord.of(t)
        f = res.finals.get(t.number) or final_of(study, t.number) or {}
        accs = [rec.tier(lb.split()[1]) for lb in labels]
        rows.append(
            [
                t.number,
                _m(rec.macs),
                f"{rec.macs / dense['macs']:.3f}",
                *(
                    "-" if r is None or r.accuracy is None else f"{100 * r.accuracy:.2f}"
                    for r in accs
                ),
                f"{100 * f['val_accuracy']:.2f}" if f else "-",
                f"{100 * f['test_accuracy']:.2f}" if f.get("test_accuracy") is not None else "-",
            ]
        )
    print(_table(rows, ["trial", "MMACs", "x dense", *labels, "final val %", "final test %"]))
    if res.finals and all(f.get("test_accuracy") is None for f in res.finals.values()):
        print(
            "no test split: the final accuracy is on val, which also chose the front (add test/ "
            "to the data)"
        )
    where = f"--storage {shlex.quote(res.settings.storage)} --study {shlex.quote(study.study_name)}"
    if args.no_final:
        ran = f"ran {len(res.ran)} of" if res.ran is not None else "took part in"
        print(
            f"this worker {ran} the study's {res.settings.n_trials} trials; the Pareto stage and "
            f"the export "
            f"belong to the worker without --no-final (`prunetune export {where} --out DIR` once "
            f"it is done)"
        )
    elif res.best_trial is not None:
        print(
            f"best under budget: trial {res.best_trial.number}; export it with `prunetune export "
            f"{where} --out DIR`"
        )
    return 0


def cmd_export(args) -> int:
    from .deploy import check_formats, parse_formats
    from .search import export, load_study

    formats = parse_formats(args.format)
    check_formats(formats)
    out = prepare_out(args.out, args.overwrite)
    infos = export(
        load_study(args.storage, args.study),
        out,
        whole_front=args.front,
        partial=args.partial,
        untuned=args.untuned,
        artifact_store=args.artifact_store,
        formats=formats,
    )
    best = infos[0]
    f = best["final"]
    if f:
        acc = f"final val accuracy {100 * f['val_accuracy']:.2f} %, " + (
            f"test {100 * f['test_accuracy']:.2f} %"
            if f.get("test_accuracy") is not None
            else "no test split"
        )
    else:
        acc = f"proxy accuracy {100 * best['proxy_accuracy']:.2f} %; weights {best['weights']}"
    print(
        f"exported trial {best['trial']}: {best['macs'] / 1e6:.3f} MMACs "
        f"({best['flops'] / 1e6:.3f} MFLOPs), {acc}"
    )
    if best.get("partial"):
        print(f"partial: {best['partial']}")
    print(
        f"wrote {out}/config.json, {out}/model.safetensors, {out}/export.json"
        + (f" and {len(infos) - 1} front members under {out}/front/" if args.front else "")
    )
    for d in best["deploy"].values():
        print(
            f"wrote {out}/{d['file']}: max abs diff vs PyTorch {d['max_abs_diff']:.1e} "
            f"({d['checked_with']})"
        )
    if best.get("reproduce"):
        print(f"reproduce: {best['reproduce']}")
    return 0


def cmd_report(args) -> int:
    from .search import load_study, settings_of, write_report

    if not str(args.out).strip():
        raise PrunetuneError("--out is empty; name the report folder, e.g. --out prunetune-report")
    prepare_out(args.out, overwrite=True, what="report folder")  # a bad --out fails before work
    study = load_study(args.storage, args.study)
    settings_of(study)  # a study prunetune did not make has nothing to report
    out = write_report(study, args.out)
    if not args.quiet:
        print(
            f"wrote {out}/pareto.html (interactive, works offline), {out}/pareto.png and "
            f"{out}/report.md"
        )
    return 0


def cmd_dashboard(args) -> int:
    from optuna_dashboard import run_server

    from .search import load_study, make_storage, open_store, study_store

    _check_bindable(args.host, args.port)  # a busy port fails before the storage is opened
    study = load_study(args.storage, args.study)  # fail early with a clear message
    spec = args.artifact_store
    if spec is None and study.user_attrs.get("settings") is not None:  # made by prunetune
        spec = study_store(study)
    store = open_store(spec, must_exist=args.artifact_store is not None) if spec else None
    print(
        f"optuna-dashboard for study {study.study_name} at http://{args.host}:{args.port}/ "
        + (f"with the weights in {spec} " if spec else "")
        + "(Ctrl-C to stop)"
    )
    try:
        run_server(
            make_storage(args.storage, heartbeat=False),
            host=args.host,
            port=args.port,
            artifact_store=store,
        )
    except OSError as e:  # the port was taken between the check and the start
        raise PrunetuneError(
            f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); pass another --port"
        ) from None
    return 0


def cmd_train_default(args) -> int:
    from .default.train import train

    # checks --out before training
    m = train(args.epochs, args.lr, seed=args.seed, out=args.out, model=args.model)
    print(
        f"val accuracy {m['val_accuracy']:.4f}  test accuracy {m['test_accuracy']:.4f}  "
        f"({m['train_seconds']} s); wrote {m['weights']}"
    )
    return 0


# --- argparse value types: a bad number is a one-line usage error before any work -------------


def _starts(text: str) -> tuple[str, ...]:
    from .search import STARTS

    if text.strip().lower() == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in STARTS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown starting point {bad[0] if bad else text!r}; choose from "
            f"{', '.join(STARTS)}, comma-separated, or none"
        )
    return kinds


_INT_WORDS = {0: "an integer >= 0", 1: "an integer >= 1"}
#: Largest seed every random generator in use accepts (NumPy's legacy seeding).
MAX_SEED = 2**32 - 1


def _checked(
    cast: Callable[[str], float], ok: Callable[[float], bool], want: str, name: str
) -> Callable[[str], float]:
    """An argparse ``type``: ``cast`` the text, then require ``ok``; a one-line error says
    ``want``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, but got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {want}, but got {text!r}")
        return value

    parse.__name__ = name
    return parse


def _int_type(low: int, high: int | None = None, name: str = "int") -> Callable[[str], int]:
    """An argparse ``type`` that accepts integers in ``[low, high]``."""
    want = (
        _INT_WORDS.get(low, f"an integer >= {low}")
        if high is None
        else f"an integer in {low}..{high}"
    )
    return _checked(int, lambda v: v >= low and (high is None or v <= high), want, name)


def _float_type(
    low: float, high: float | None = None, low_open: bool = False, name: str = "float"
) -> Callable[[str], float]:
    """An argparse ``type`` that accepts finite floats above ``low`` (or at it) up to ``high``."""
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    want = (
        f"a number {lo}"
        if high is None
        else f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    )
    return _checked(
        float,
        lambda v: (
            math.isfinite(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
        ),
        want,
        name,
    )


_positive_int = _int_type(1, name="positive_int")
_nonneg_int = _int_type(0, name="nonneg_int")
_seed = _int_type(0, MAX_SEED, name="seed")
_port = _int_type(1, 65535, name="port")
_positive_float = _float_type(0.0, low_open=True, name="positive_float")
_nonneg_float = _float_type(0.0, name="nonneg_float")
_fraction = _float_type(0.0, 1.0, low_open=True, name="fraction")
_std_value = _float_type(0.0, low_open=True, name="std")


_finite_float = _checked(float, math.isfinite, "a finite number", "finite_float")


def _device(text: str) -> str:
    """``--device``: auto, cpu, cuda or cuda:N (availability is checked when the model loads)."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N, but got {text!r}")


def _folder(text: str) -> str:
    """A folder to write into later (``--artifacts``): not a file and not under a file."""
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies under {p}, which is a file"
                raise argparse.ArgumentTypeError(f"{text} {where}; pass a folder")
            break
    return text


def _check_bindable(host: str, port: int) -> None:
    """Raises PrunetuneError unless a server can listen on ``host:port`` (checked by binding)."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise PrunetuneError(
            f"--host {host!r} is not a known address ({e}); use e.g. 127.0.0.1 or 0.0.0.0"
        ) from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the dashboard's server does
        try:
            sock.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PrunetuneError(
                    f"port {port} on {host} is already in use; stop what listens "
                    "there or pass another --port"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise PrunetuneError(
                    f"--host {host} is not an address of this machine; use e.g. "
                    "127.0.0.1 or 0.0.0.0"
                ) from None
            if e.errno == errno.EACCES:
                raise PrunetuneError(
                    f"port {port} needs privileges to listen on; pass a --port of 1024 or above"
                ) from None
            raise PrunetuneError(
                f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --host or --port"
            ) from None


def build_parser() -> argparse.ArgumentParser:
    from .pruners import list_saliencies
    from .registry import BACKENDS, SAMPLERS

    p = _Parser(
        prog="prunetune", description="Pruning-configuration search for Vision Transformers"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="per-block heads, MLP width, tokens, MACs and params")
    s.add_argument(
        "--model", help="timm model name, hf:DIR or a JSON/YAML model file (default: digits_vit)"
    )
    s.add_argument(
        "--config", help="show a pruning config's shapes and cost instead of the dense model"
    )
    s.set_defaults(func=cmd_info)

    s = sub.add_parser(
        "prune", help="apply a config; write pruned weights + config; print before/after"
    )
    s.add_argument("--config", required=True, help="pruning config (.json or .yaml)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    _add_model_args(s)
    s.add_argument(
        "--calib-samples", type=_positive_int, default=256, help="images for data-driven criteria"
    )
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument("--latency-batch", type=_positive_int, default=64)
    s.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for latency (default: torch's)",
    )
    s.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    s.add_argument(
        "--finetune-epochs",
        type=_nonneg_float,
        default=0.0,
        help="recovery fine-tuning with distillation from the dense model (default 0: none)",
    )
    s.add_argument("--lr", type=_positive_float, default=5e-4, help="fine-tuning learning rate")
    s.add_argument("--seed", type=_seed, default=0)
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("saliency", help="per-block saliency table of one criterion")
    s.add_argument("--criterion", required=True, help=f"one of {', '.join(list_saliencies())}")
    _add_model_args(s)
    s.add_argument("--calib-samples", type=_positive_int, default=256)
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument("--seed", type=_seed, default=0)
    s.set_defaults(func=cmd_saliency)

    s = sub.add_parser(
        "search",
        help="budgeted multi-objective search for a pruning configuration",
        allow_abbrev=False,
    )
    s.add_argument("--budget", help="flops=50%%, flops=0.2G, macs=100M, params=3M or latency=4ms")
    s.add_argument(
        "--config",
        dest="settings_file",
        metavar="SETTINGS",
        help="search settings file (YAML or JSON: the settings.yaml a search writes beside "
        "its artifacts); flags given on the command line win",
    )
    _add_model_args(s)
    _study_args(s)
    s.add_argument(
        "--space", default="hybrid", help="preset (structured, tokens, hybrid) or a YAML file"
    )
    s.add_argument(
        "--n-trials",
        type=_positive_int,
        default=24,
        help="completed + pruned trials in the study (default 24)",
    )
    s.add_argument("--sampler", default="nsga2", choices=SAMPLERS.names())
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--backend", default="optuna", choices=BACKENDS.names())
    s.add_argument(
        "--workers", type=_positive_int, default=1, help="concurrent trials with --backend ray"
    )
    s.add_argument("--address", help="address of an existing Ray cluster (--backend ray)")
    s.add_argument("--calib-samples", type=_positive_int, default=256)
    s.add_argument("--batch-size", type=_positive_int, default=64)
    s.add_argument(
        "--tier-b-fraction",
        type=_fraction,
        default=0.5,
        help="fraction of tier-a scores that go on to tier b",
    )
    s.add_argument(
        "--tier-b-steps",
        type=_nonneg_int,
        default=100,
        help="distillation steps of the tier-b proxy",
    )
    s.add_argument(
        "--budget-target-low",
        type=_fraction,
        default=None,
        metavar="F",
        help="scale each candidate onto a sampled cost in [F, 1] x the budget (default: only "
        "shrink candidates that are over the budget)",
    )
    s.add_argument(
        "--start",
        type=_starts,
        default=("uniform", "sensitivity"),
        metavar="KINDS",
        help="informed starting points a new study tries first, comma-separated, or none: "
        "uniform, sensitivity (FastNAS-style over every dimension), fastnas (widths only), "
        "slim (ViT-Slim's learned masks cut by one global threshold) "
        "(default: uniform,sensitivity)",
    )
    s.add_argument(
        "--cpu-budget",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop starting trials once this process has used this much CPU time (the trial "
        "count still caps the search)",
    )
    s.add_argument("--lr", type=_positive_float, default=5e-4)
    s.add_argument(
        "--final-epochs",
        type=_nonneg_float,
        default=8.0,
        help="fine-tuning epochs of the Pareto stage",
    )
    s.add_argument(
        "--grace-period",
        type=_int_type(HEARTBEAT_GRACE_MIN, name="seconds"),
        default=None,
        help="seconds without a heartbeat after which a running trial counts as dead and is "
        "retried (default 20)",
    )
    s.add_argument(
        "--front-max",
        type=_positive_int,
        default=4,
        help="front members fine-tuned in the Pareto stage",
    )
    s.add_argument(
        "--no-final",
        action="store_true",
        help="skip the Pareto stage (extra workers on a shared study)",
    )
    s.add_argument(
        "--artifacts",
        type=_folder,
        help="folder of settings.yaml, Ray's files and the default --artifact-store "
        "(default: prunetune-artifacts/<study> beside the SQLite file)",
    )
    s.add_argument(
        "--artifact-store",
        metavar="STORE",
        help="Optuna artifact store of the Pareto-stage weights: a folder (shared by a "
        "cluster's machines) or s3://bucket[/prefix] (needs boto3; AWS_ENDPOINT_URL for an "
        "S3-compatible server) (default: <artifacts>/optuna-artifacts)",
    )
    s.add_argument(
        "--latency-batch",
        type=_positive_int,
        default=64,
        help="batch size of latency budgets and measurements",
    )
    s.add_argument(
        "--measure-latency", action="store_true", help="also measure each candidate's latency"
    )
    s.add_argument(
        "--refresh-latency-table",
        action="store_true",
        help="re-measure the cached per-block latency table of a latency budget",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("export", help="write the best under-budget config and pruned weights")
    _study_args(s)
    s.add_argument("--out", required=True)
    s.add_argument("--front", action="store_true", help="also export every Pareto-front member")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument(
        "--partial",
        action="store_true",
        help="export a study that is still running or was interrupted (labelled partial)",
    )
    s.add_argument(
        "--untuned",
        action="store_true",
        help="export pruned, untuned weights where the Pareto-stage weights are missing (labelled)",
    )
    s.add_argument(
        "--artifact-store",
        metavar="STORE",
        help="read the Pareto-stage weights from this store (a folder, e.g. a copy, or "
        "s3://bucket[/prefix]) instead of the one the study records",
    )
    s.add_argument(
        "--format",
        metavar="F[,F]",
        help="also write deployment files, each checked against PyTorch: onnx (model.onnx, run "
        "with onnxruntime; needs prunetune[deploy]), pt2 (model.pt2, torch.export)",
    )
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="Pareto plot (PNG, HTML) and Markdown table of a study")
    _study_args(s)
    s.add_argument("--out", default="prunetune-report")
    s.add_argument("--quiet", action="store_true", help="print nothing on success")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("dashboard", help="optuna-dashboard on a study")
    _study_args(s)
    s.add_argument("--host", default="127.0.0.1", help="bind address (default localhost only)")
    s.add_argument("--port", type=_port, default=8080)
    s.add_argument(
        "--artifact-store",
        metavar="STORE",
        help="show the Pareto-stage weights from this store instead of the one the study records",
    )
    s.set_defaults(func=cmd_dashboard)

    s = sub.add_parser("train-default", help="retrain a built-in model (default: digits_vit)")
    s.add_argument("--model", default="digits_vit", help="digits_vit (default) or photos_vit")
    s.add_argument("--epochs", type=_positive_int, default=120)
    s.add_argument("--lr", type=_positive_float, default=2e-3)
    s.add_argument("--seed", type=_seed, default=0)
    s.add_argument("--out", help="folder (default: inside the installed package)")
    s.set_defaults(func=cmd_train_default)
    p.commands = dict(sub.choices)
    return p


def _typed_dests(parser: _Parser, command: str, argv: list[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv`` (the search's --config merge needs them)."""
    sub = parser.commands.get(command)
    if sub is None:
        return set()
    return {
        dest
        for dest, opts in sub.flags.items()
        if any(t == o or t.startswith(o + "=") for o in opts for t in argv)
    }


def main(argv: list[str] | None = None) -> int:
    from .plugins import load_plugins

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        load_plugins()  # before the parser: plug-ins add choices (criteria, samplers, ...)
    except PrunetuneError as e:
        print(f"prunetune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given_dests = _typed_dests(parser, args.command, argv)
    try:
        return args.func(args)
    except PrunetuneError as e:
        print(f"prunetune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("prunetune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
