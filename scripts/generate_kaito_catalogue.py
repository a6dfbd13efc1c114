#!/usr/bin/env python3
"""Generate the preset and instance-type data workspace-fsm ships, from a KAITO checkout.

Usage::

    python scripts/generate_kaito_catalogue.py PATH [COMMIT] [--out DIR]

PATH is a KAITO working tree or a bare git directory; COMMIT (default ``HEAD``) is the commit to
read, through ``git show``, so the working tree's state does not matter. The output goes to
``workspace_fsm/kaito/data/`` (``presets.json`` and ``instance_types.json``); both record the
KAITO commit and this script's version.

What is read, and from where (KAITO's layout at the 2026 commits, where every preset is a
vLLM-compatible model generated from a pre-computed HuggingFace catalogue):

- ``presets/workspace/models/supported_models.yaml``: the preset names, type, runtime, version,
  deprecated, downloadAtRuntime / downloadAuthRequired, and the ``base`` image's tag;
- ``pkg/utils/plugin/plugin.go`` ``LegacyBuiltinToCatalog``: short preset names -> HF model IDs;
- ``presets/workspace/models/model_catalog.yaml``: per HF model, weight size, architecture and
  the attention shape the KV-cache size per token comes from;
- ``presets/workspace/generator/generator.go``: how a preset is derived from a catalogue entry
  (disk = weights + system disk, bytes per token, vLLM run parameters chosen by name prefix or
  architecture);
- ``presets/workspace/models/vllm_model.go``, ``metadata.go``: the vLLM command, the defaults
  added to its run parameters, and the readiness timeout as a function of weight size;
- ``presets/workspace/models/transformer_runtime_{inference,tuning}_parameters.go``: which presets
  the transformers runtime can serve, and which can be tuned, with their command lines;
- ``presets/workspace/models/vllm_model_arch_list.txt``: the architectures vLLM serves;
- ``pkg/model/interface.go``: vLLM's ``--gpu-memory-utilization`` (default and per GPU model);
- ``pkg/workspace/estimator/nodesestimator/estimator.go``: the node estimator's constants;
- ``pkg/sku/*_sku_handler.go``: the instance types per cloud (GPU count, memory, model).

Go sources cannot be imported, so this scans their literals with a small tokenizer; when an
expected declaration is missing or has an unexpected shape it stops with an error naming the
file and the declaration, rather than writing partial data.

Needs the Python standard library, PyYAML and ``git``. No network.
"""

from __future__ import annotations

import argparse
import decimal
import json
import os
import re
import subprocess
import sys
from typing import Any

import yaml

GENERATOR_VERSION = 1
KAITO_REPOSITORY = "kaito-project/kaito"

DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "workspace_fsm", "kaito", "data")

# Presets KAITO's own fine-tuning examples tune, which its code at the 2026 commits no longer
# resolves (they are listed in supported_models.yaml, but have no model-catalogue entry and no
# legacy alias, so its admission webhook answers "Unsupported tuning preset name"). KAITO's Go
# presets before the catalogue rewrite (presets/workspace/models/falcon) supported tuning for
# the two base models. They are kept tunable so the examples run; the entry says
# ``kaito_resolves: false`` so nothing else is inferred from it.
COMPAT_TUNING: dict[str, tuple[str, ...]] = {
    "falcon-7b": ("lora", "qlora"),
    "falcon-40b": ("lora", "qlora"),
}


class SourceError(RuntimeError):
    """An expected declaration was not found in KAITO's sources (or had another shape)."""


# -- reading the sources ------------------------------------------------------------------------


class Source:
    def __init__(self, path: str, commit: str) -> None:
        self.path = path
        self.commit_ref = commit
        self.commit = self._git("rev-parse", f"{commit}^{{commit}}").strip()

    def _git(self, *args: str) -> str:
        git_dir = self.path
        if os.path.isdir(os.path.join(self.path, ".git")):
            git_dir = os.path.join(self.path, ".git")
        try:
            out = subprocess.run(
                ["git", f"--git-dir={git_dir}", *args],
                check=True, capture_output=True, text=True,
            )
        except subprocess.CalledProcessError as e:
            raise SourceError(f"git {' '.join(args)} failed in {self.path}: {e.stderr.strip()}") from e
        return out.stdout

    def read(self, rel: str) -> str:
        return self._git("show", f"{self.commit}:{rel}")

    def ls(self, rel: str) -> list[str]:
        out = self._git("ls-tree", "--name-only", f"{self.commit}:{rel}")
        return [line for line in out.splitlines() if line]


# -- a small Go literal scanner -----------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<nl>\n)
  | (?P<ws>[ \t\r]+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<raw>`[^`]*`)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<num>[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>:=|==|[{}()\[\],:=*+\-/<>&|!.;%])
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise SourceError(f"{where}: cannot scan Go source at offset {pos}: {text[pos:pos + 40]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind in ("ws", "comment"):
            continue
        out.append((kind, m.group()))
    out.append(("eof", ""))
    return out


class Ident(str):
    """A Go identifier used as a value (resolved later against the file's declarations)."""


class Expr(str):
    """A Go expression this scanner does not evaluate (kept as its tokens, space-separated)."""


def _unquote(tok: str) -> str:
    if tok.startswith("`"):
        return tok[1:-1]
    return str(json.loads(tok))


class _Parser:
    def __init__(self, toks: list[tuple[str, str]], where: str) -> None:
        self.toks = toks
        self.i = 0
        self.where = where

    def _skip_nl(self) -> None:
        while self.toks[self.i][0] == "nl":
            self.i += 1

    def value(self, top: bool = False) -> Any:
        self._skip_nl()
        toks = self.toks
        j = self.i
        while toks[j][0] == "ident" or toks[j][1] in ("[", "]", "*", "&"):
            j += 1
        if toks[j][1] == "{":
            self.i = j + 1
            return self.composite()
        parts: list[tuple[str, str]] = []
        depth = 0
        while True:
            kind, tok = toks[self.i]
            if kind == "eof" or (depth == 0 and (tok in (",", "}", ")", ":") or (top and kind == "nl"))):
                break
            if kind == "nl":
                self.i += 1
                continue
            if tok in ("(", "[", "{"):
                depth += 1
            elif tok in (")", "]", "}"):
                depth -= 1
            parts.append((kind, tok))
            self.i += 1
        if not parts:
            raise SourceError(f"{self.where}: expected a value, found {toks[self.i][1]!r}")
        if len(parts) == 1:
            kind, tok = parts[0]
            if kind in ("str", "raw"):
                return _unquote(tok)
            if kind == "num":
                return float(tok) if ("." in tok or "e" in tok.lower()) else int(tok.replace("_", ""))
            if tok in ("true", "false"):
                return tok == "true"
            if kind == "ident":
                return Ident(tok)
        return Expr(" ".join(t for _, t in parts))

    def composite(self) -> Any:
        """Body of a composite literal after '{': a dict if it has keys, else a list."""
        items: list[Any] = []
        keyed: dict[Any, Any] = {}
        while True:
            self._skip_nl()
            if self.toks[self.i][1] == "}":
                self.i += 1
                break
            first = self.value()
            self._skip_nl()
            if self.toks[self.i][1] == ":":
                self.i += 1
                keyed[str(first)] = self.value()
                self._skip_nl()
            else:
                items.append(first)
            tok = self.toks[self.i][1]
            if tok == ",":
                self.i += 1
            elif tok != "}":
                raise SourceError(f"{self.where}: unexpected {tok!r} in a composite literal")
        if keyed and items:
            raise SourceError(f"{self.where}: a composite literal mixes keyed and plain elements")
        return keyed if keyed or not items else items


class GoFile:
    """Top-level ``const``/``var`` declarations of one Go file, read on demand as Python values."""

    def __init__(self, text: str, where: str) -> None:
        self.where = where
        self.text = text
        self._cache: dict[str, Any] = {}

    def has(self, name: str) -> bool:
        return self._find(name) is not None

    def _find(self, name: str) -> re.Match[str] | None:
        return re.search(
            r"^[ \t]*(?:(?:var|const)[ \t]+)?" + re.escape(name) + r"\b[^=\n:]*?=(?!=)", self.text, re.M
        )

    def get(self, name: str) -> Any:
        if name in self._cache:
            return self._cache[name]
        m = self._find(name)
        if m is None:
            raise SourceError(f"{self.where}: declaration {name!r} not found (KAITO's layout changed?)")
        parser = _Parser(_tokens(self.text[m.end():], self.where), f"{self.where} {name}")
        value = parser.value(top=True)
        self._cache[name] = value
        return value

    def resolve(self, value: Any, *others: GoFile) -> Any:
        """``value`` with identifiers replaced by this file's (or ``others``') declarations."""
        if isinstance(value, Ident):
            for f in (self, *others):
                if f.has(value):
                    return f.resolve(f.get(value), *others)
            return value
        if isinstance(value, dict):
            return {k: self.resolve(v, *others) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, *others) for v in value]
        return value

    def string_map(self, name: str) -> dict[str, Any]:
        value = self.resolve(self.get(name))
        if not isinstance(value, dict):
            raise SourceError(f"{self.where}: {name} is not a map literal with string keys")
        return {str(k): v for k, v in value.items()}

    def scalar(self, name: str, kind: type) -> Any:
        value = self.resolve(self.get(name))
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise SourceError(f"{self.where}: {name} = {value!r}, expected a {kind.__name__}")
        return value


def _func_body(text: str, func: str, where: str) -> str:
    m = re.search(r"func (?:\([^)]*\)\s*)?" + re.escape(func) + r"\(", text)
    if m is None:
        raise SourceError(f"{where}: func {func} not found")
    start = text.index("{", m.end())
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[start:k + 1]
    raise SourceError(f"{where}: func {func} has no closing brace")


def _must(pattern: str, text: str, where: str, what: str) -> re.Match[str]:
    m = re.search(pattern, text)
    if m is None:
        raise SourceError(f"{where}: {what} not found (pattern {pattern!r})")
    return m


# -- quantities and durations -------------------------------------------------------------------

_SUFFIX = {
    "": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
}


def quantity_bytes(q: str) -> int:
    """A Kubernetes quantity as an integer, rounded up (as resource.Quantity.Value does)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([KMGTP]i|[kMGTP])?", q.strip())
    if m is None:
        raise SourceError(f"cannot parse quantity {q!r}")
    value = decimal.Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    return int(value.to_integral_value(rounding=decimal.ROUND_CEILING))


def duration_seconds(expr: str, where: str) -> int:
    """``30 * time.Minute`` / ``time.Duration(30) * time.Minute`` as seconds."""
    m = re.fullmatch(r"(?:time\.Duration \( )?([0-9]+)(?: \))? \* time\.(Second|Minute|Hour)", expr.strip())
    if m is None:
        raise SourceError(f"{where}: cannot read duration {expr!r}")
    return int(m.group(1)) * {"Second": 1, "Minute": 60, "Hour": 3600}[m.group(2)]


# -- KAITO's derivations, re-done over the parsed data ------------------------------------------


def _prefix_pick(name: str, table: dict[str, Any], warnings: list[str], what: str) -> Any:
    """Go iterates these maps in random order and takes the first prefix that matches: when
    several prefixes match with different values KAITO's choice is not deterministic. We take
    the longest and say so."""
    hits = {p: v for p, v in table.items() if name.startswith(p)}
    if not hits:
        return None
    if len(set(map(str, hits.values()))) > 1:
        warnings.append(f"{name}: {what} prefixes {sorted(hits)} match with different values; "
                        "KAITO picks one at random, the longest is kept")
    return hits[max(hits, key=len)]


def bytes_per_token(entry: dict[str, Any]) -> tuple[int, str]:
    """calculateKVCacheTokenSize over a catalogue entry (loadFromCatalog's config)."""
    hidden = int(entry.get("hiddenSize") or 0)
    layers = int(entry.get("numHiddenLayers") or 0)
    heads = int(entry.get("numAttentionHeads") or 0)
    kv_heads = int(entry.get("numKeyValueHeads") or 0)
    head_dim = int(entry.get("headDim") or 0)
    if head_dim == 0 and heads > 0:
        head_dim = hidden // heads
    kv_lora = int(entry.get("kvLoraRank") or 0)  # only stored when > 0
    rope = int(entry.get("qkRopeHeadDim") or 0)
    if kv_heads == 0 and heads > 0:
        kv_heads = heads  # the catalogue config has no multi_query flag
    attn = "Unknown"
    per_token = 0
    if kv_lora > 0:
        attn = "MLA"
        per_token = kv_lora + rope
    elif heads > 0 and kv_heads > 0 and head_dim > 0:
        per_token = 2 * kv_heads * head_dim
        attn = "MHA" if heads == kv_heads else ("MQA" if kv_heads == 1 else "GQA")
    return per_token * layers * 2, attn


def readiness_timeout_seconds(size: str, consts: dict[str, int]) -> int:
    if not size:
        return consts["default"]
    try:
        gib = quantity_bytes(size) / 2**30
    except SourceError:
        return consts["default"]
    t = consts["base"] + int(gib * consts["per_gib"])
    return max(consts["default"], min(consts["max"], t))


# -- the whole extraction -----------------------------------------------------------------------


def extract(src: Source) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    warnings: list[str] = []
    models_dir = "presets/workspace/models"

    supported = yaml.safe_load(src.read(f"{models_dir}/supported_models.yaml"))
    if not isinstance(supported, dict) or not isinstance(supported.get("models"), list):
        raise SourceError("supported_models.yaml: no 'models' list")
    supported_by_name = {m["name"]: m for m in supported["models"]}
    base = supported_by_name.get("base")
    if base is None or "tag" not in base:
        raise SourceError("supported_models.yaml: no 'base' entry with a tag")

    catalogue = yaml.safe_load(src.read(f"{models_dir}/model_catalog.yaml"))
    if not isinstance(catalogue, dict) or not isinstance(catalogue.get("models"), list):
        raise SourceError("model_catalog.yaml: no 'models' list")
    catalogue_by_id = {m["name"].lower(): m for m in catalogue["models"]}

    arch_list = {a.strip() for a in src.read(f"{models_dir}/vllm_model_arch_list.txt").splitlines() if a.strip()}
    if not arch_list:
        raise SourceError("vllm_model_arch_list.txt is empty")

    plugin = GoFile(src.read("pkg/utils/plugin/plugin.go"), "plugin.go")
    legacy = plugin.string_map("LegacyBuiltinToCatalog")

    gen_path = "presets/workspace/generator/generator.go"
    gen = GoFile(src.read(gen_path), "generator.go")
    system_disk_gib = gen.scalar("SystemFileDiskSizeGiB", int)
    reasoning_prefix = gen.string_map("reasoningParserModeNamePrefixMap")
    reasoning_arch = gen.string_map("reasoningParserArchMap")
    non_reasoning = gen.string_map("nonReasoningModels")
    tool_prefix = gen.string_map("toolCallParserModeNamePrefixMap")
    tool_arch = gen.string_map("toolCallParserArchMap")
    chat_prefix = gen.string_map("chatTemplatePrefixMap")
    tokenizer_prefix = gen.string_map("tokenizerModePrefixMap")
    attention_prefix = gen.string_map("vllmAttentionBackendPrefixMap")
    moe_exact = gen.string_map("vllmMoeBackendOverride")
    kv_dtype_prefix = gen.string_map("vllmKVCacheDtypePrefixMap")
    gdn_prefix = gen.string_map("vllmGdnPrefillBackendPrefixMap")
    expert_parallel = gen.string_map("vllmExpertParallelEnabled")
    no_autotune = gen.string_map("vllmDisableFlashInferAutotunePrefixMap")
    gen_text = src.read(gen_path)
    # The pieces of FinalizeParams / ParseModelMetadata whose shape we re-implement: check
    # they are still there, so a rewrite upstream stops this script instead of drifting.
    finalize = _func_body(gen_text, "FinalizeParams", "generator.go")
    for key in ("load_format", "config_format", "tokenizer_mode", "attention-backend", "moe-backend",
                "kv-cache-dtype", "gdn-prefill-backend", "enable-expert-parallel",
                "kernel-config.enable_flashinfer_autotune"):
        if f'"{key}"' not in finalize:
            raise SourceError(f"generator.go: FinalizeParams no longer sets {key!r}")
    _must(r"int\(sz \+ SystemFileDiskSizeGiB\)", gen_text, "generator.go", "the disk size formula")
    _must(r"tokenSize := totalElements \* 2", gen_text, "generator.go", "the fp16 KV-cache size")

    meta = GoFile(src.read(f"{models_dir}/metadata.go"), "metadata.go")
    vllm_command = meta.scalar("DefaultVLLMCommand", str)
    ray_leader = meta.scalar("DefaultVLLMRayLeaderBaseCommand", str)
    ray_worker = meta.scalar("DefaultVLLMRayWorkerBaseCommand", str)

    vllm_model_text = src.read(f"{models_dir}/vllm_model.go")
    vm = GoFile(vllm_model_text, "vllm_model.go")
    timeouts = {
        "default": duration_seconds(vm.get("defaultReadinessTimeout"), "vllm_model.go"),
        "max": duration_seconds(vm.get("maxReadinessTimeout"), "vllm_model.go"),
        "base": duration_seconds(vm.get("readinessTimeoutBase"), "vllm_model.go"),
        "per_gib": duration_seconds(vm.get("readinessTimeoutPerGiB"), "vllm_model.go"),
    }
    gip = _func_body(vllm_model_text, "GetInferenceParameters", "vllm_model.go")
    for key in ("trust-remote-code", "dtype", "tool-call-parser", "enable-auto-tool-choice",
                "chat-template", "reasoning-parser"):
        if f'"{key}"' not in gip:
            raise SourceError(f"vllm_model.go: GetInferenceParameters no longer sets {key!r}")
    chat_dir = _must(r'"(/workspace/chat_templates/)"\s*\+\s*m\.model\.ChatTemplate', gip,
                     "vllm_model.go", "the chat-template path").group(1)
    distributed = _must(r"func \(\*vLLMCompatibleModel\) SupportDistributedInference\(\) bool \{\s*return (true|false)",
                        vllm_model_text, "vllm_model.go", "SupportDistributedInference").group(1) == "true"

    tfs_file = GoFile(src.read(f"{models_dir}/transformer_runtime_inference_parameters.go"),
                      "transformer_runtime_inference_parameters.go")
    tfs_params = tfs_file.resolve(tfs_file.get("TransformerInferenceParameters"))
    tune_file = GoFile(src.read(f"{models_dir}/transformer_runtime_tuning_parameters.go"),
                       "transformer_runtime_tuning_parameters.go")
    tune_params = tune_file.resolve(tune_file.get("TransformerTuningParameters"))
    if not isinstance(tfs_params, dict) or not isinstance(tune_params, dict):
        raise SourceError("transformer runtime parameters: expected map literals")

    tuning_methods = _tuning_methods(src)

    interface_text = src.read("pkg/model/interface.go")
    iface = GoFile(interface_text, "interface.go")
    gpu_util_default = iface.scalar("defaultGPUMemoryUtilization", str)
    gpu_util_by_model = iface.string_map("gpuMemoryUtilizationByGPUModel")

    est = GoFile(src.read("pkg/workspace/estimator/nodesestimator/estimator.go"), "estimator.go")
    est_text = src.read("pkg/workspace/estimator/nodesestimator/estimator.go")
    estimator = {
        "gpu_memory_utilization": float(est.scalar("gpuMemoryUtilization", float)),
        "weight_expansion_factor": float(est.scalar("weightExpansionFactor", float)),
        "base_overhead_gib": float(est.scalar("baseOverheadGiB", float)),
        "overhead_weight_factor": float(est.scalar("overheadWeightFactor", float)),
        "default_context_size": int(_must(r"maxModelLen := ([0-9]+)", est_text, "estimator.go",
                                          "the default context size").group(1)),
    }
    for piece in (r"minGPUs := int\(modelSize/availMemPerGPU\) \+ 1",
                  r"nodeCountPerReplica = \(minGPUs \+ gpuConfig\.GPUCount - 1\) / gpuConfig\.GPUCount",
                  r"kvCache := float64\(maxModelLen\*inferParams\.BytesPerToken\) / float64\(gpuConfig\.GPUCount\)",
                  r"availMemPerGPU := \(availGPUMem - fixedReserve\) / \(1 \+ overheadWeightFactor\)"):
        _must(piece, est_text, "estimator.go", "the estimator formula")

    consts_file = GoFile(src.read("pkg/utils/consts/consts.go"), "consts.go")
    port_expr = consts_file.get("PortInferenceServer")
    port = int(_must(r"^(?:int32 \( )?([0-9]+)(?: \))?$", str(port_expr), "consts.go",
                     "PortInferenceServer").group(1))

    # -- presets ------------------------------------------------------------------------------
    def derive(hf_id: str) -> dict[str, Any]:
        """GeneratePreset(hf_id) from the catalogue, then vLLMCompatibleModel's parameters."""
        entry = catalogue_by_id[hf_id]
        name = hf_id.split("/")[-1].lower()
        archs = list(entry.get("architectures") or [])
        if not archs:
            if name.startswith("mistral-large-3"):
                archs = ["MistralLarge3ForCausalLM"]
            elif name.startswith("ministral-3"):
                archs = ["Mistral3ForConditionalGeneration"]
        reasoning = None
        if name not in non_reasoning:
            reasoning = _prefix_pick(name, reasoning_prefix, warnings, "reasoning-parser")
            if reasoning is None:
                reasoning = next((reasoning_arch[a] for a in archs if a in reasoning_arch), None)
        tool = next((tool_prefix[p] for p in sorted(tool_prefix, reverse=True) if name.startswith(p)), None)
        if tool is None:
            tool = next((tool_arch[a] for a in archs if a in tool_arch), None)
        chat = _prefix_pick(name, chat_prefix, warnings, "chat-template")
        load_format = entry.get("loadFormat") or "auto"
        config_format = entry.get("configFormat") or entry.get("loadFormat") or "auto"
        tokenizer_mode = entry.get("tokenizerMode") or entry.get("loadFormat") or "auto"
        run: dict[str, str] = {
            "load_format": load_format, "config_format": config_format, "tokenizer_mode": tokenizer_mode,
        }
        for key, table in (("tokenizer_mode", tokenizer_prefix), ("attention-backend", attention_prefix),
                           ("kv-cache-dtype", kv_dtype_prefix), ("gdn-prefill-backend", gdn_prefix)):
            picked = _prefix_pick(name, table, warnings, key)
            if picked is not None:
                run[key] = picked
        if name in moe_exact:
            run["moe-backend"] = moe_exact[name]
        if _prefix_pick(name, {p: v for p, v in expert_parallel.items() if v}, warnings, "expert parallel"):
            run["enable-expert-parallel"] = ""
        if _prefix_pick(name, {p: v for p, v in no_autotune.items() if v}, warnings, "flashinfer autotune"):
            run["kernel-config.enable_flashinfer_autotune"] = "False"
        # vLLMCompatibleModel.GetInferenceParameters adds these defaults
        run.setdefault("trust-remote-code", "")
        if "dtype" not in run:
            run["dtype"] = "auto" if entry.get("quantMethod") else "bfloat16"
        if tool:
            run["tool-call-parser"] = tool
            run["enable-auto-tool-choice"] = ""
        if chat:
            run["chat-template"] = chat_dir + chat
        if reasoning:
            run["reasoning-parser"] = reasoning
        size = str(entry.get("modelFileSize") or "0Gi")
        bpt, attn = bytes_per_token(entry)
        disk_gib = int(float(size.removesuffix("Gi")) + system_disk_gib)
        resolves = not archs or any(a in arch_list for a in archs)
        tfs = tfs_params.get(name)
        tune = tune_params.get(name)
        return {
            "hf_model_id": hf_id,
            "model_name": name,
            "version": f"https://huggingface.co/{hf_id}",
            "kaito_resolves": resolves,
            "model_file_size": size,
            "gpu_memory_bytes": quantity_bytes(size),
            "disk_storage_requirement": f"{disk_gib}Gi",
            "bytes_per_token": bpt,
            "attn_type": attn,
            "model_token_limit": int(entry.get("modelTokenLimit") or 0),
            "architectures": archs,
            "quant_method": entry.get("quantMethod") or "",
            "readiness_timeout_seconds": readiness_timeout_seconds(size, timeouts),
            "supports_distributed_inference": distributed,
            "vllm": {
                "base_command": vllm_command,
                "model_name": name,
                "model_run_params": dict(sorted(run.items())),
                "ray_leader_base_command": ray_leader,
                "ray_worker_base_command": ray_worker,
                "disallow_lora": False,
            },
            "transformers": _transformers(tfs, name, tfs_file),
            "tuning": _tuning(tune, tuning_methods, tune_file, name),
        }

    presets: list[dict[str, Any]] = []
    for m in supported["models"]:
        # "base" (the runtime image without weights) is listed too, as supported_models.yaml
        # does; KAITO does not accept it as a preset name (kaito_resolves is False).
        name = m["name"]
        hf = legacy.get(name.lower())
        common = {
            "name": name,
            "type": m.get("type", "text-generation"),
            "runtime": m.get("runtime", "tfs"),
            "deprecated": bool(m.get("deprecated", False)),
            "download_auth_required": bool(m.get("downloadAuthRequired", False)),
            "image": {"name": f"kaito-{base['name']}", "tag": str(base["tag"])},
        }
        if hf is not None and hf in catalogue_by_id:
            d = derive(hf)
            # Every catalogue-backed preset downloads its weights at runtime into the base image.
            entry = {**common, **d, "download_at_runtime": True}
            if not m.get("downloadAtRuntime", False):
                warnings.append(f"{name}: supported_models.yaml does not say downloadAtRuntime, "
                                "but KAITO serves it from the catalogue (download at runtime)")
        else:
            if hf is not None:
                warnings.append(f"{name}: alias {hf} has no model_catalog.yaml entry")
            entry = {
                **common,
                "hf_model_id": None,
                "model_name": name,
                "version": m.get("version", ""),
                "kaito_resolves": False,
                "download_at_runtime": bool(m.get("downloadAtRuntime", False)),
                "model_file_size": None, "gpu_memory_bytes": None, "disk_storage_requirement": None,
                "bytes_per_token": None, "attn_type": None, "model_token_limit": None,
                "architectures": [], "quant_method": "",
                "readiness_timeout_seconds": timeouts["default"],
                "supports_distributed_inference": False,
                "vllm": None, "transformers": None,
                "tuning": ({"methods": list(COMPAT_TUNING[name]), "compat": True}
                           if name in COMPAT_TUNING else None),
                # A baked-weights image, as supported_models.yaml names it
                "image": {"name": f"kaito-{name}", "tag": str(m.get("tag", ""))},
            }
            warnings.append(f"{name}: not resolvable by KAITO at this commit (no catalogue entry)")
        presets.append(entry)
    # HuggingFace model IDs KAITO resolves from its catalogue without a preset name of their own
    # (KAITO lower-cases an ID before looking it up; those with a legacy name are found through
    # the named preset's hf_model_id).
    aliased = {p["hf_model_id"] for p in presets if p.get("hf_model_id")}
    hf_models: list[dict[str, Any]] = []
    for cat_entry in catalogue["models"]:
        hf = cat_entry["name"].lower()
        if hf in aliased:
            continue
        d = derive(hf)
        hf_models.append({
            "name": cat_entry["name"], "type": "text-generation", "runtime": "tfs",
            "deprecated": False, "download_auth_required": False,
            "image": {"name": f"kaito-{base['name']}", "tag": str(base["tag"])},
            **d, "download_at_runtime": True,
        })

    head = {
        "kaito": {"repository": KAITO_REPOSITORY, "commit": src.commit},
        "generator": {"script": "scripts/generate_kaito_catalogue.py", "version": GENERATOR_VERSION},
    }
    presets_doc = {
        **head,
        "base_image": {"name": f"kaito-{base['name']}", "tag": str(base["tag"]),
                       "runtime_versions": dict(base.get("runtimeVersion") or {})},
        "inference_port": port,
        "vllm": {
            "gpu_memory_utilization": gpu_util_default,
            "gpu_memory_utilization_by_gpu_model": gpu_util_by_model,
        },
        "estimator": estimator,
        "tuning_methods": tuning_methods,
        "presets": presets,
        "hf_models": hf_models,
    }
    instance_doc = {**head, **_instance_types(src)}
    return presets_doc, instance_doc, warnings


def _transformers(tfs: Any, name: str, f: GoFile) -> dict[str, Any] | None:
    if tfs is None:
        return None
    if not isinstance(tfs, dict):
        raise SourceError(f"{f.where}: entry {name!r} is not a struct literal")
    for key in ("BaseCommand", "AccelerateParams", "InferenceMainFile", "ModelRunParams"):
        if key not in tfs:
            raise SourceError(f"{f.where}: entry {name!r} has no {key}")
    return {
        "base_command": tfs["BaseCommand"],
        "accelerate_params": dict(sorted(tfs["AccelerateParams"].items())),
        "inference_main_file": tfs["InferenceMainFile"],
        "model_run_params": dict(sorted(tfs["ModelRunParams"].items())),
        "model_name": name,  # GetInferenceParameters sets tfsParam.ModelName to the preset's name
        "tag": tfs.get("Tag", ""),
    }


def _tuning(tune: Any, methods: list[str], f: GoFile, name: str) -> dict[str, Any] | None:
    if tune is None:
        return None
    if not isinstance(tune, dict) or not isinstance(tune.get("Transformers"), dict):
        raise SourceError(f"{f.where}: tuning entry {name!r} has an unexpected shape")
    tfs = tune["Transformers"]
    timeout = tune.get("ReadinessTimeout")
    return {
        "methods": methods,
        "disk_storage_requirement": tune.get("DiskStorageRequirement", ""),
        "total_safetensor_file_size": tune.get("TotalSafeTensorFileSize", ""),
        "base_command": tfs.get("BaseCommand", ""),
        "model_name": tfs.get("ModelName", name),
        "readiness_timeout_seconds": duration_seconds(str(timeout), f.where) if timeout else None,
    }


def _tuning_methods(src: Source) -> list[str]:
    text = src.read("api/v1beta1/workspace_types.go")
    found = re.findall(r'TuningMethod\w+\s+TuningMethod\s*=\s*"([a-z]+)"', text)
    if not found:
        raise SourceError("api/v1beta1/workspace_types.go: no TuningMethod constants")
    return found


def _instance_types(src: Source) -> dict[str, Any]:
    handler = src.read("pkg/sku/cloud_sku_handler.go")
    body = _func_body(handler, "GetCloudSKUHandler", "cloud_sku_handler.go")
    pairs = re.findall(r"case consts\.(\w+):\s*return (\w+)\(\)", body)
    if not pairs:
        raise SourceError("cloud_sku_handler.go: GetCloudSKUHandler has no cloud cases")
    consts = GoFile(src.read("pkg/utils/consts/consts.go"), "consts.go")
    files = {}
    for f in src.ls("pkg/sku"):
        if f.endswith(".go") and not f.endswith("_test.go"):
            files[f] = src.read(f"pkg/sku/{f}")
    entry_re = re.compile(r"\{([^{}]*\bSKU:\s*\"[^\"]+\"[^{}]*)\}")
    rows: list[dict[str, Any]] = []
    clouds: list[str] = []
    for const_name, ctor in pairs:
        cloud = consts.scalar(const_name, str)
        clouds.append(cloud)
        text = next((t for t in files.values() if f"func {ctor}()" in t), None)
        if text is None:
            raise SourceError(f"pkg/sku: constructor {ctor} (cloud {cloud}) not found")
        fn = _func_body(text, ctor, f"pkg/sku {ctor}")
        live = "\n".join(line for line in fn.splitlines() if not line.strip().startswith("//"))
        count = 0
        for m in entry_re.finditer(live):
            fields = dict(re.findall(r"(\w+):\s*(\"[^\"]*\"|resource\.MustParse\(\"[^\"]*\"\)|[0-9.]+|true|false)",
                                     m.group(1)))
            try:
                mem = re.fullmatch(r'resource\.MustParse\("([^"]*)"\)', fields["GPUMem"])
                if mem is None:
                    raise KeyError("GPUMem")
                gpu_mem = mem.group(1)
                row = {
                    "name": json.loads(fields["SKU"]),
                    "cloud": cloud,
                    "gpu_count": int(fields["GPUCount"]),
                    "gpu_memory": gpu_mem,
                    "gpu_memory_bytes": quantity_bytes(gpu_mem),
                    "gpu_model": json.loads(fields["GPUModel"]),
                    "nvme_disk_enabled": fields.get("NVMeDiskEnabled") == "true",
                    "cuda_compute_capability": float(fields.get("CUDAComputeCapability", "0")),
                }
            except (KeyError, ValueError) as e:
                raise SourceError(f"pkg/sku {ctor}: cannot read entry {m.group(0)!r}: {e}") from e
            rows.append(row)
            count += 1
        if count == 0:
            raise SourceError(f"pkg/sku {ctor}: no SKU entries found")
    return {"clouds": clouds, "instance_types": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="a KAITO checkout or bare git directory")
    ap.add_argument("commit", nargs="?", default="HEAD", help="the commit to read (default HEAD)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: the package's data/)")
    args = ap.parse_args(argv)
    try:
        src = Source(args.path, args.commit)
        presets, instances, warnings = extract(src)
    except SourceError as e:
        print(f"generate_kaito_catalogue: {e}", file=sys.stderr)
        return 1
    for w in warnings:
        print(f"note: {w}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    for fname, doc in (("presets.json", presets), ("instance_types.json", instances)):
        path = os.path.join(args.out, fname)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"wrote {path}")
    print(f"{len(presets['presets'])} presets, {len(presets['hf_models'])} more Hugging Face models, "
          f"{len(instances['instance_types'])} instance types "
          f"from {KAITO_REPOSITORY}@{src.commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
