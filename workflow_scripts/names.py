"""Names that become paths: the model, build, tier and remedy names a plan may use.

Every output lies under results/ (rules/*.smk): results/{model}/... per model beside the fixed
toolchain/, logs/, benchmarks/, package/, summary/ and quality.csv; a model's builds as
quant/{model}-{build}.gguf and validate/{build}.json, .sanity.json, .tensors.json, .verdict.json
beside the reference's validate/reference.json and reference.sanity.json; speeds as
speed/{tier}/{build}.json, the reference's under its type's name (F16); logs and benchmarks flat in
one folder per rule as {model}, {model}-{build}, {model}-reference, {model}-{reference type} and
{model}-{tier}-{build}; plots flat in summary/plots/ as {model}-size-vs-kld.svg and
tokens-per-s-{tier}.svg; packages as package/{model}/ holding {model}-{label}.gguf (the requested
quant a build ships for) or its llama-gguf-split parts {model}-{label}-00001-of-00003.gguf.

The schema keeps each name to letters, digits, '.', '_' and '-', starting with a letter or digit
(so no '/', no hidden or relative names) and matched against the whole text. Given that, two
outputs can share a path, or one lie inside another, only where this module refuses:

- a model named like a fixed entry of results/ (``RESERVED_MODEL_NAMES``);
- two models, tiers or builds of one model with the same name: builds are quant types, variants
  and fallback tries ``{quant}-{remedy name}``;
- a build named reference, or ending like another build's file (``check_build_name``);
- two combinations of model, tier and build spelling the same flat file name (``check_flat_names``).

Beyond paths, it refuses requested quants whose ``-hf REPO:TAG`` tag would also pick another's
package file because of a name the user chose (``check_package_tags``).

Names are compared ignoring case: the default file systems of macOS and Windows do.
tests/test_config_names.py checks this reasoning against the output patterns of the rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from workflow_scripts.errors import UserError

RESERVED_MODEL_NAMES = ("benchmarks", "logs", "package", "quality.csv", "summary", "toolchain")
# results/{model}/validate/{build}.json would be the file another build writes with these suffixes.
BUILD_FILE_SUFFIXES = (".sanity", ".tensors", ".verdict")
# llama-gguf-split names the parts of {model}-{build}.gguf {model}-{build}-00001-of-00003.gguf.
SPLIT_PART = re.compile(r".*-[0-9]{5}-of-[0-9]{5}")


class Claims:
    """Names given so far, each with the field that gave it (compared ignoring case)."""

    def __init__(self, source_name: str, expected: str):
        self.source_name, self.expected = source_name, expected
        self.owners: dict[str, tuple[str, str]] = {}

    def claim(self, name: str, where: str) -> None:
        """Give ``name`` to the field ``where``; refuse '..' and a name already given."""
        if ".." in name:
            raise UserError(f"{self.source_name}: {where}: {name!r} may not contain '..'; expected a plain name")
        if name.lower() in self.owners:
            other, owner = self.owners[name.lower()]
            case = "" if other == name else f" as {other!r} (names that differ only in case are one file on macOS)"
            raise UserError(f"{self.source_name}: {where}: {name!r} is already used by {owner}{case}; "
                            f"expected {self.expected}")
        self.owners[name.lower()] = (name, where)


def check_model_name(name: str, where: str, source_name: str) -> None:
    """A model's folder results/{model}/ must not be a fixed entry of results/ (a model named
    package would share results/package/ with every model's package, which is replaced whole)."""
    if name.lower() in RESERVED_MODEL_NAMES:
        raise UserError(f"{source_name}: {where}: {name!r} is the name of results/{name.lower()}; expected a model "
                        f"name other than {', '.join(RESERVED_MODEL_NAMES)}")


def check_build_name(name: str, where: str, source_name: str) -> None:
    """A build's files must not be the reference's or another build's. (A quant of the reference's
    own type, F16 of an F16 reference, shares the reference's speed file on purpose: one job
    measures both, and they are the same tensors.)"""
    lower = name.lower()
    if lower == "reference":
        raise UserError(f"{source_name}: {where}: {name!r} names the reference's own files "
                        "(validate/reference.json, reference.sanity.json); expected another build name")
    if lower.endswith(BUILD_FILE_SUFFIXES):
        raise UserError(f"{source_name}: {where}: {name!r} makes validate/{name}.json, a file of build "
                        f"{name.rsplit('.', 1)[0]!r}; expected a build name not ending in "
                        f"{', '.join(BUILD_FILE_SUFFIXES)}")
    if SPLIT_PART.fullmatch(lower):
        raise UserError(f"{source_name}: {where}: {name!r} is how llama-gguf-split names the part of a larger "
                        "build in the package; expected a build name not ending in -NNNNN-of-NNNNN")


def package_file(model: str, label: str) -> str:
    """The package's file for a requested quant: named by the label it ships under (a fallback
    build that ships for IQ4_XS is {model}-IQ4_XS.gguf), which is what ``llama-server -hf
    REPO:IQ4_XS``, Ollama and LM Studio look for in file names."""
    return f"{model}-{label}.gguf"


def tag_collisions(model: str, labels: Iterable[str]) -> list[tuple[str, str]]:
    """(tag, other label) for each label whose ``-hf REPO:TAG`` tag would also pick another label's
    package file, under llama.cpp's rule (common/download.cpp, find_best_model: the first listed
    model file whose path contains the tag followed by '-' or '.', ignoring case; the tag is used
    as a regular expression). The Hub lists in its own order, so such a tag may fetch either file."""
    labels = list(labels)
    names = {label: (package_file(model, label), f"{model}-{label}-00001-of-00002.gguf") for label in labels}
    found = []
    for tag in labels:
        pattern = re.compile(tag + "[.-]", re.IGNORECASE)
        found += [(tag, other) for other in labels if other != tag and any(map(pattern.search, names[other]))]
    return found


def check_package_tags(model: str, labels: Iterable[str], types: Iterable[str], where: str, source_name: str) -> None:
    """Refuse labels whose tags catch each other's package files where a name the user chose is the
    cause (a variant Q4_K_M-static beside Q4_K_M, a model named x-Q8_0): renaming fixes it, and
    published so, the tag may fetch either file. Two llama.cpp type names (F16 and BF16, Q1_0 and
    TQ1_0) collide by themselves: they are allowed, and the card says how to ask for the file."""
    types = set(types)
    for tag, other in tag_collisions(model, labels):
        if {tag, other} <= types and not re.search(tag + "[.-]", model + "-", re.IGNORECASE):
            continue
        raise UserError(f"{source_name}: {where}: {tag!r} and {other!r}: `-hf REPO:{tag}` would also select "
                        f"{package_file(model, other)} (llama.cpp picks the first file whose name contains the tag "
                        "followed by '-' or '.'); expected model, quant and variant names that stay apart that way "
                        "(a variant Q4_K_M-static beside Q4_K_M can be named Q4_K_M_static)")


def _flat_names(builds: dict[str, Iterable[str]], tiers: list[str], reference_type: str):
    """(file pattern, the names its file name joins, the field a refusal names) of every file whose
    name joins several names in a folder that all models share. logs/sanity/ holds {model}-{build}
    and {model}-reference (the other logs and benchmarks of builds only the first); logs/speed/
    {model}-{tier}-{build}, the reference under its type's name."""
    for index, (model, names) in enumerate(builds.items()):
        where = f"models[{index}].name"
        for build in (*names, "reference"):
            yield "results/logs/sanity/{}.log", (model, build), where
        for tier in tiers:
            for build in (*names, reference_type):
                yield "results/logs/speed/{}.log", (model, tier, build), where
        yield "results/summary/plots/{}.svg", (model, "size-vs-kld"), where
    for index, tier in enumerate(tiers):
        yield "results/summary/plots/{}.svg", ("tokens-per-s", tier), f"tiers[{index}].name"


def check_flat_names(builds: dict[str, Iterable[str]], tiers: list[str], reference_type: str, source_name: str) -> None:
    """Refuse two combinations of model, tier and build that spell one file name joined with '-'
    (models a and a-b, with builds b-Q8_0 and Q8_0, would share results/logs/sanity/a-b-Q8_0.log).
    ``builds`` are the names of each model's builds, models in config order."""
    seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for pattern, names, where in _flat_names(builds, tiers, reference_type):
        key = (pattern, "-".join(names).lower())
        other = seen.setdefault(key, names)
        if other != names:
            raise UserError(f"{source_name}: {where}: {' + '.join(map(repr, names))} and "
                            f"{' + '.join(map(repr, other))} both make {pattern.format('-'.join(names))}; expected "
                            "model, tier and build names that stay apart when joined with '-'")
