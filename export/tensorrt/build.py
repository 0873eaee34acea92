"""The thin TensorRT part: ONNX -> strongly typed network -> serialized plan, and the equivalent trtexec command.

Written to TensorRT's documented Python API for 10.x and 11.x. TensorRT 11 removed the precision builder flags
(``BuilderFlag.FP16/INT8``), the INT8 calibrators and per-layer precision: networks are strongly typed, so precision
comes from the ONNX graph itself (an FP16 or Q/DQ-quantized ONNX made beforehand). TensorRT 10 builds the same way
with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``, which TensorRT 11 accepts and ignores; nothing here sets a
precision flag, so one code path serves both.

Only :func:`build_plan` needs TensorRT and a GPU; the rest runs anywhere. The TensorRT module is passed in (see
:func:`load_tensorrt`), which is also how the CPU tests check the plumbing with a stub (not a GPU result).
"""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.trt_operators import list_nodes, load_graph, parser_unsupported_nodes
from runtime.atomic import atomic_write_bytes
from runtime.errors import PansegError
from runtime.trt_sidecar import TensorProfile, format_shape, parse_version

MiB = 1 << 20
GiB = 1 << 30
MAX_OPTIMIZATION_LEVEL = 5  # trtexec: "integers from 0 to the maximum optimization level, which is currently 5"
MIN_TENSORRT = (10, 0)
# --hardware-compatibility value -> (HardwareCompatibilityLevel member, trtexec spelling)
HARDWARE_LEVELS = {"same": ("SAME_COMPUTE_CAPABILITY", "sameComputeCapability"), "ampere+": ("AMPERE_PLUS", "ampere+")}


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings; None leaves TensorRT's default (workspace: the GPU's memory; optimization level: 3)."""

    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    builder_optimization_level: int | None = None
    version_compatible: bool = False
    hardware_compatibility: str = "none"  # "none", "same" (same compute capability) or "ampere+"
    verbose: bool = False
    device: int = 0  # the CUDA device that builds (and that the plan is tuned for)
    tf32: bool = True  # False: FP32 layers without TF32 tensor cores, for exact-fp32 parity checks
    inspect: bool = False  # detailed profiling verbosity, and the engine inspector's layer dump next to the plan

    def __post_init__(self) -> None:
        if self.workspace_bytes is not None and self.workspace_bytes < MiB:
            raise PansegError(f"the workspace must be at least 1 MiB, got {self.workspace_bytes} bytes")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= MAX_OPTIMIZATION_LEVEL:
            raise PansegError(f"the builder optimization level must be 0..{MAX_OPTIMIZATION_LEVEL}, got {level}")
        if self.hardware_compatibility not in ("none", *HARDWARE_LEVELS):
            raise PansegError(f"hardware compatibility must be none, {', '.join(HARDWARE_LEVELS)}; got "
                              f"{self.hardware_compatibility!r}")
        if isinstance(self.device, bool) or not isinstance(self.device, int) or self.device < 0:
            raise PansegError(f"the CUDA device must be an index 0, 1, ..., got {self.device!r}")

    def describe(self) -> dict[str, Any]:
        """For the side file's ``builder`` entry."""
        return {"workspace_bytes": self.workspace_bytes, "builder_optimization_level": self.builder_optimization_level,
                "timing_cache": str(self.timing_cache) if self.timing_cache else None, "tf32": self.tf32}


def _trtexec_name(name: str) -> str:
    # trtexec splits shape specs on ':' and ','; names containing them are quoted with single quotes
    return f"'{name}'" if (":" in name or "," in name) else name


def trtexec_command(onnx_path: str | Path, plan_path: str | Path, profiles: Mapping[str, TensorProfile],
                    options: BuildOptions) -> list[str]:
    """The trtexec arguments that build the same plan (without running trtexec's own benchmark afterwards)."""
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={plan_path}"]
    if profiles:
        for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            specs = ",".join(f"{_trtexec_name(n)}:{format_shape(getattr(p, key))}" for n, p in profiles.items())
            args.append(f"{flag}={specs}")
    if options.workspace_bytes is not None:
        args.append(f"--memPoolSize=workspace:{options.workspace_bytes // MiB}M")
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={options.timing_cache}")
    if options.builder_optimization_level is not None:
        args.append(f"--builderOptimizationLevel={options.builder_optimization_level}")
    args.append("--stronglyTyped")
    if options.version_compatible:
        args.append("--versionCompatible")
    if options.hardware_compatibility != "none":
        args.append(f"--hardwareCompatibilityLevel={HARDWARE_LEVELS[options.hardware_compatibility][1]}")
    if not options.tf32:
        args.append("--noTF32")
    if options.device:
        args.append(f"--device={options.device}")
    if options.inspect:
        args += ["--profilingVerbosity=detailed", f"--exportLayerInfo={layer_info_path(plan_path)}"]
    if options.verbose:
        args.append("--verbose")
    args.append("--skipInference")
    return args


def layer_info_path(plan_path: str | Path) -> Path:
    """Where ``--inspect`` writes the engine inspector's dump: ``model.plan`` -> ``model.plan.layers.json``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(plan_path.name + ".layers.json")


def format_command(args: Sequence[str]) -> str:
    """A shell-ready line (paths with spaces and quoted names survive copy-paste)."""
    return shlex.join(args)


def load_tensorrt() -> Any:
    """Import ``tensorrt`` (10 or newer) or fail with one line saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise PansegError(f"tensorrt is not installed ({exc}): building engines needs TensorRT "
                          f"{'.'.join(map(str, MIN_TENSORRT))}+ and an NVIDIA GPU (pip install 'panseg[gpu-cu13]', or "
                          "'panseg[gpu-cu12]' on a CUDA 12 driver); --dry-run prints the profile and the trtexec "
                          "command without it") from exc
    if parse_version(trt.__version__)[:2] < MIN_TENSORRT:
        raise PansegError(f"TensorRT {trt.__version__} is too old: strongly typed builds need "
                          f"{'.'.join(map(str, MIN_TENSORRT))}+")
    return trt


def network_flags(trt: Any) -> int:
    """Creation flags for a strongly typed network (the flag is a no-op on TensorRT 11, required on 10)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if parse_version(trt.__version__)[0] >= 11:
        return 0  # strong typing is unconditional from TensorRT 11 on
    raise PansegError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED network flag")


def parser_errors(parser: Any) -> list[str]:
    """Every ONNX parser error as 'node NAME (OP): description' (TensorRT names the node and its operator)."""
    messages = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        name, op = _call(error, "node_name"), _call(error, "node_operator")
        where = f"node '{name}' ({op})" if name or op else f"node #{_call(error, 'node')}"
        messages.append(f"{where}: {_call(error, 'desc')} [{_call(error, 'code')}]")
    return messages


def _call(obj: Any, method: str) -> str:
    value = getattr(obj, method, None)
    try:
        value = value() if callable(value) else value
    except Exception:  # noqa: BLE001 - a missing detail must not hide the error being reported
        return ""
    return "" if value is None else str(value)


def check_parser_supports(trt: Any, parser: Any, onnx_path: Path) -> None:
    """Ask the installed parser about every distinct default-domain op type of the graph (its subgraphs and the
    local functions it calls too) before parsing, and refuse in one line naming the nodes it does not support.

    The installed TensorRT is the authority here, not the operator table (export/trt_operators.py), which is one
    release's and may be older. ``OnnxParser.supports_operator(op_name: str) -> bool`` ("Returns whether the
    specified operator may be supported by the parser") is documented in TensorRT's Python API reference
    (docs.nvidia.com, parsers/Onnx/pyOnnx.html), and ``IParser::supportsOperator`` in the C++ reference for TensorRT
    10.0.0 and 10.2.0 (classnvonnxparser_1_1_i_parser.html); the 10.x bindings (pyOnnx.cpp) define it next to
    ``supports_model_v2``. TensorRT 11's reference was not at hand, so a parser without the method is not asked and
    the parse itself decides (its errors are reported by :func:`parse_onnx`). "May be supported": a True here can
    still fail in the parse, on a node's attributes or inputs.
    """
    supports = getattr(parser, "supports_operator", None)
    if not callable(supports):
        return
    model, _ = load_graph(onnx_path)
    refused = parser_unsupported_nodes(model, supports)
    if refused:
        described = list_nodes(refused, lambda node: f"'{node[0]}' ({node[1]})")
        raise PansegError(f"{onnx_path}: TensorRT {trt.__version__}'s ONNX parser does not support "
                          f"{len(refused)} node(s) (asked before parsing): {described}")


def parse_onnx(trt: Any, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Fill ``network`` from the ONNX file (external weights are found next to it); raise with every parser error.
    Operators the installed parser says it does not support are refused first (:func:`check_parser_supports`)."""
    parser = trt.OnnxParser(network, logger)
    check_parser_supports(trt, parser, onnx_path)
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser) or ["the parser gave no details (run with --verbose)"]
        raise PansegError(f"{onnx_path}: TensorRT's ONNX parser failed: {'; '.join(errors)}")
    return parser


def check_network_inputs(network: Any, profiles: Mapping[str, TensorProfile], onnx_path: Path) -> None:
    """Every dynamic network input has a profile, and every profile names a network input."""
    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    unknown = sorted(set(profiles) - set(inputs))
    missing = sorted(n for n, dims in inputs.items() if any(d < 0 for d in dims) and n not in profiles)
    if unknown or missing:
        raise PansegError(f"{onnx_path}: the profile does not match the network's inputs "
                          f"({', '.join(f'{n} {d}' for n, d in inputs.items())}): "
                          + "; ".join(([f"no such input {', '.join(unknown)}"] if unknown else [])
                                      + ([f"no profile for {', '.join(missing)}"] if missing else [])))


def configure(trt: Any, builder: Any, config: Any, profiles: Mapping[str, TensorProfile],
              options: BuildOptions) -> None:
    """Workspace limit, optimization level, compatibility flags and the one optimization profile."""
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compatibility != "none":
        member, _ = HARDWARE_LEVELS[options.hardware_compatibility]
        level = getattr(trt.HardwareCompatibilityLevel, member, None)
        if level is None:
            raise PansegError(f"TensorRT {trt.__version__} has no hardware compatibility level {member}")
        config.hardware_compatibility_level = level
    if not options.tf32:
        flag = getattr(trt.BuilderFlag, "TF32", None)
        if flag is None:
            raise PansegError(f"TensorRT {trt.__version__} has no TF32 builder flag to clear for --no-tf32")
        config.clear_flag(flag)
    if options.inspect:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if profiles:
        profile = builder.create_optimization_profile()
        for name, p in profiles.items():
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)


def load_timing_cache(config: Any, path: Path | None) -> None:
    """Start from the timing cache file when there is one (a cache from another GPU/TensorRT is set aside)."""
    if path is None:
        return
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        warnings.warn(f"{path}: timing cache does not match this GPU or TensorRT version; building without it "
                      "(it will be replaced)", RuntimeWarning, stacklevel=2)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def save_timing_cache(config: Any, path: Path | None) -> None:
    if path is not None:
        atomic_write_bytes(path, bytes(config.get_timing_cache().serialize()))


def progress_monitor(trt: Any) -> Any | None:
    """A tqdm bar per build phase through ``IProgressMonitor`` (TensorRT 10+); Ctrl-C cancels the build cleanly."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None
    from tqdm import tqdm

    class Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.bars: dict[str, Any] = {}
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, unit="step", position=len(self.bars),
                                             leave=parent_phase is None)
            except KeyboardInterrupt:  # cannot cancel from here; step_complete does
                self.cancelled = True

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                bar = self.bars.get(phase_name)
                if bar is not None and bar.n < bar.total:
                    bar.update(1)
            except KeyboardInterrupt:
                self.cancelled = True
            return not self.cancelled

        def phase_finish(self, phase_name: str) -> None:
            try:
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()
            except KeyboardInterrupt:
                self.cancelled = True

    return Monitor()


def build_plan(trt: Any, onnx_path: Path, profiles: Mapping[str, TensorProfile], options: BuildOptions,
               progress: bool = True) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build the serialized plan (TensorRT on a GPU)."""
    logger = trt.Logger(trt.Logger.VERBOSE if options.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = parse_onnx(trt, network, logger, onnx_path)  # owns weights the network refers to: alive until built
    check_network_inputs(network, profiles, onnx_path)
    config = builder.create_builder_config()
    configure(trt, builder, config, profiles, options)
    load_timing_cache(config, options.timing_cache)
    monitor = progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    del parser
    if monitor is not None and monitor.cancelled:
        raise KeyboardInterrupt
    if plan is None:
        raise PansegError(f"{onnx_path}: TensorRT {trt.__version__} failed to build the engine (its log above says "
                          "why; --verbose for more)")
    save_timing_cache(config, options.timing_cache)
    return bytes(plan)


def inspect_plan(trt: Any, plan: bytes) -> str:
    """The engine inspector's JSON (layer names, precisions, tactics: detailed when built with ``inspect``)."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise PansegError("TensorRT could not deserialize the plan it just built to inspect it")
    inspector = engine.create_engine_inspector()
    return str(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
