"""Auto builds' recipes: a type per tensor from measured sensitivities, as a --tensor-type-file.

Each tensor's type is chosen to minimise predicted mean KLD within a byte budget (or bytes down to
a KLD target), and the recipe is written as a llama-quantize ``--tensor-type-file``.

Inputs (docs/architecture.md, "auto builds"): one sensitivity record per menu type (the proxy
error ``wse`` of every quantizable tensor at the type it actually got, and its bytes), and the
probes (real mean KLD on the calibration text of a "base" file, every tensor at its most accurate
menu type, and of one file per tensor group with that group lowered to its fewest-bytes type).

Calibration: per group g, ``alpha_g = (KLD_g - KLD_base) / sum_t (wse_t(probe type) - wse_t(base type))``
turns proxy error into KLD. A group whose measured rise is not above twice its uncertainty
(``sqrt(e_g^2 + e_base^2)`` of the two ``kld_mean_error``: the two runs share their tokens, so this
overstates the noise of the difference and floors no group it should not), or whose probe changed no
proxy error, gets the floor: a tenth of the smallest alpha measured among the other groups. It is
then cheap but not free to lower it, rather than a guess at its true sensitivity.

Prediction: KLD of an assignment = KLD_base + sum_t alpha_g(t) * (wse_t(type_t) - wse_t(base type_t)).
Allocation: per tensor the lower convex hull of its (bytes, cost) options; every tensor starts at
its fewest bytes and takes upgrades by steepest cost drop per byte (the Lagrangian order), until
the next one would exceed the budget; the bytes left are then filled greedily with any upgrade
that still fits (hull or not; by drop per byte and by largest drop, the better kept); for a KLD
target, upgrades go on until the prediction meets it. A type that reproduces a tensor of the
reference (squared error below ``REPRODUCES`` of its squares) is no option for that
tensor: the source was stored in it, or in a grid it holds (a Q4_1 source's tensors requantized
to Q4_1 or Q5_1 come back exact), and against a dequantized reference that looks free.

A measured fallback remedy (``--raise-from``) is the same search from the actual types of the build
before it (its census, or the plan of a remedy skipped before it): each tensor keeps its type or
takes one with more bytes and less predicted cost, within ``--allowance-pct`` more bytes. A tensor
whose starting type no record measured keeps it.

    python -m workflow_scripts.auto_recipe --sensitivity S.json... --probes probes.json --reference F16.gguf
        (--bytes-of-census C.json | --target-bpw X | --max-mean-kld X | --raise-from C.json --allowance-pct X)
        --build NAME --out NAME.recipe.json --tensor-types NAME.tensor-types.txt
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from workflow_scripts.atomic import atomic_write_text
from workflow_scripts.errors import UserError, run_cli
from workflow_scripts.quant_types import bits_per_weight
from workflow_scripts.remedy_plan import previous_types
from workflow_scripts.sensitivity import complete_records, tensor_options, tensor_type_lines
from workflow_scripts.tensor_error import role

# A group whose rise cannot be told from noise gets this fraction of the smallest measured alpha.
FLOOR_FRACTION = 0.1
# A measured rise counts when it exceeds this many combined standard errors.
NOISE_SIGMAS = 2.0


class Option(NamedTuple):
    """One type a tensor can take: its bytes and its predicted KLD cost over the base probe."""

    type: str
    n_bytes: int
    cost: float


class Unreachable(UserError):
    """No assignment meets the cost target; ``best_cost`` is the lowest any reaches."""

    def __init__(self, message: str, best_cost: float):
        super().__init__(message)
        self.best_cost = best_cost


@dataclass(frozen=True)
class Allocation:
    choice: dict[str, Option]  # tensor name -> chosen option
    n_bytes: int
    cost: float


# ---------------------------------------------------------------- records

def check_inputs(records: dict[str, dict[str, Any]], probes_name: str, probes: dict[str, Any],
                 reference_name: str, reference_tensors: dict[str, int]) -> None:
    """Refuse records and probes that do not belong together: every record (keyed by its file name)
    names the same tensors, each a tensor of the reference with the same element count; the probes'
    tensors are the records' and their types are among the records' types for each."""
    required = {"type", "n_bytes", "n_elements", "wse"}
    for source, record in records.items():
        if not isinstance(record.get("tensors"), dict) or "menu_type" not in record:
            raise UserError(f"{source}: expected a sensitivity record with 'menu_type' and 'tensors'")
        if record.get("reference", Path(reference_name).name) != Path(reference_name).name:
            raise UserError(f"{source}: measured on reference {record['reference']}, not {Path(reference_name).name}; "
                            "expected records of this reference")
        for name, entry in record["tensors"].items():
            if not isinstance(entry, dict) or not required <= set(entry):
                raise UserError(f"{source}: tensors.{name} lacks one of {sorted(required)}; expected a sensitivity "
                                "record written by workflow_scripts.sensitivity")
            if name not in reference_tensors:
                raise UserError(f"{source}: tensor {name} is not in the reference {reference_name}; expected "
                                "records measured on this reference")
            if entry["n_elements"] != reference_tensors[name]:
                raise UserError(f"{source}: tensor {name} has {entry['n_elements']} elements, the reference "
                                f"{reference_name} {reference_tensors[name]}; expected records measured on this reference")
    types = tensor_options(records)  # refuses records of different tensors
    names = set(types)
    probe_list = [("base", probes.get("base"))] + [(f"groups.{g}", p) for g, p in probes.get("groups", {}).items()]
    for where, probe in probe_list:
        if not isinstance(probe, dict) or not {"tensors", "kld_mean", "kld_mean_error"} <= set(probe):
            raise UserError(f"{probes_name}: {where} lacks 'tensors', 'kld_mean' or 'kld_mean_error'")
        for name, ttype in probe["tensors"].items():
            if name not in names:
                raise UserError(f"{probes_name}: {where} names tensor {name}, which the sensitivity records do not "
                                "have; expected probes of the same reference")
            if ttype not in types[name]:
                raise UserError(f"{probes_name}: {where} gives {name} type {ttype}, which no sensitivity record has "
                                f"for it (they have {', '.join(sorted(types[name]))})")
    if not probes.get("groups"):
        raise UserError(f"{probes_name}: expected 'groups' with one probe per tensor group")
    missing = sorted(names - set(probes["base"]["tensors"]))
    if missing:
        raise UserError(f"{probes_name}: base names no type for {len(missing)} tensor(s), e.g. {missing[0]}; "
                        "expected every quantizable tensor")


# ---------------------------------------------------------------- calibration

def calibrate(records: list[dict[str, Any]], probes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per probed group: the measured KLD rise over base, its noise, the proxy rise, alpha, and
    whether alpha is the floor (see the module's docstring)."""
    table = tensor_options({r["menu_type"]: r for r in records})
    base = probes["base"]
    found = {}
    for group, probe in probes["groups"].items():
        proxy = 0.0
        for name, ttype in probe["tensors"].items():
            base_type = base["tensors"][name]
            if ttype == base_type:
                continue
            if role(name) != group:
                raise UserError(f"the probe of group {group} changes {name}, a tensor of group {role(name)}; "
                                "expected a probe to lower its own group only")
            proxy += table[name][ttype][1] - table[name][base_type][1]
        rise = probe["kld_mean"] - base["kld_mean"]
        noise = math.hypot(probe["kld_mean_error"], base["kld_mean_error"])
        measured = rise > NOISE_SIGMAS * noise and proxy > 0
        found[group] = {"kld_rise": rise, "noise": noise, "proxy_rise": proxy,
                        "alpha": rise / proxy if measured else None, "floored": not measured}
    measured_alphas = [c["alpha"] for c in found.values() if not c["floored"]]
    if not measured_alphas:
        raise UserError(f"the probes could not discriminate: no group's KLD rise over base "
                        f"({base['kld_mean']:.4g}) exceeds {NOISE_SIGMAS:g}x its uncertainty with a positive proxy "
                        "rise, so no scale could be measured; use more calibration text (more chunks) for the probes")
    floor = FLOOR_FRACTION * min(measured_alphas)
    for entry in found.values():
        if entry["floored"]:
            entry["alpha"] = floor
    return found


def scales(records: list[dict[str, Any]], probes: dict[str, Any]) -> dict[str, float]:
    """alpha per probed group: KLD per unit of proxy error (floored where the probe was noise)."""
    return {group: entry["alpha"] for group, entry in calibrate(records, probes).items()}


# Relative squared error (se / ref_se, unweighted) at or below which a type reproduces the reference:
# an exact requantization leaves only the rounding of its scales (demo: 209 of its 210 Q4_1 tensors
# at Q5_1 <= 1.1e-7, its Q8_0 embedding at Q8_0 4.2e-8), while a type the weights did not come from
# errs far more (Q8_0 of those Q4_1 tensors >= 2.9e-5). Unweighted, because one dominant imatrix
# column can make a lossy type's weighted error look tiny (demo blk.11.ffn_down at Q4_K: 8e-7).
REPRODUCES = 1e-6


def reproducing(records: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
    """Per tensor the actual types that reproduce it (see ``REPRODUCES``); tensors with none left out."""
    found: dict[str, set[str]] = {}
    for record in records:
        for name, entry in record["tensors"].items():
            if float(entry["se"]) <= REPRODUCES * float(entry["ref_se"]):
                found.setdefault(name, set()).add(entry["type"])
    return {name: frozenset(types) for name, types in found.items()}


def options(records: list[dict[str, Any]], probes: dict[str, Any], alphas: dict[str, float],
            exclude: dict[str, frozenset[str]] | None = None,
            keep: dict[str, str] | None = None) -> dict[str, list[Option]]:
    """Per tensor its distinct actual types as (type, n_bytes, cost over its base type), less the
    types ``exclude`` names for it (by actual type, not menu type: a Q4_1 source's tensors lose
    Q5_1 also where it is Q5_K's row fallback) other than the one ``keep`` names for it (a
    measured remedy's starting type stays where it is, whatever it reproduces)."""
    base_types = probes["base"]["tensors"]
    found = {}
    for name, types in tensor_options({r["menu_type"]: r for r in records}).items():
        group = role(name)
        kept = {t: v for t, v in types.items()
                if t not in (exclude or {}).get(name, ()) or t == (keep or {}).get(name)}
        if not kept:
            raise UserError(f"tensor {name}: every type the records give it ({', '.join(sorted(types))}) reproduces "
                            "the reference (the source was stored in it); expected a menu with another type for it")
        if len(kept) > 1 and group not in alphas:
            raise UserError(f"the probes have no probe of group {group} (tensor {name} has {len(kept)} types to "
                            "choose from); expected one probe per tensor group")
        base_wse = types[base_types[name]][1]
        found[name] = [Option(t, nb, alphas.get(group, 0.0) * (wse - base_wse)) for t, (nb, wse) in kept.items()]
    return found


# ---------------------------------------------------------------- allocation

def _frontier(points: Iterable[Option]) -> list[Option]:
    """The points no other beats: by bytes, each strictly cheaper in cost than every point with no
    more bytes (a point with more bytes and not less cost is dominated)."""
    out: list[Option] = []
    for point in sorted(points, key=lambda p: (p.n_bytes, p.cost)):
        if not out or point.cost < out[-1].cost:
            out.append(point)
    return out


def lower_hull(points: Iterable[Option]) -> list[Option]:
    """The lower convex hull of (bytes, cost), fewest bytes first, dominated points dropped. Points
    on a hull edge are kept: they are the same price per byte, in smaller steps."""
    hull: list[Option] = []
    for point in _frontier(points):
        while len(hull) >= 2:
            o, a = hull[-2], hull[-1]
            cross = (a.n_bytes - o.n_bytes) * (point.cost - o.cost) - (a.cost - o.cost) * (point.n_bytes - o.n_bytes)
            if cross >= 0:
                break
            hull.pop()  # a lies above the line from o to point
        hull.append(point)
    return hull


def _slope(hull: list[Option], i: int) -> float:
    return (hull[i + 1].cost - hull[i].cost) / (hull[i + 1].n_bytes - hull[i].n_bytes)


def allocate(options: dict[str, list[Option]], budget_bytes: int | None = None,
             max_cost: float | None = None) -> Allocation:
    """One option per tensor: the least total cost within ``budget_bytes``, or the fewest upgrades
    (by the Lagrangian order) that bring the total cost to ``max_cost`` or below. Within a budget the
    result is optimal when the budget falls on a vertex of the Lagrangian path, and otherwise above
    the optimum by at most the cost drop of the one hull step that did not fit."""
    if (budget_bytes is None) == (max_cost is None):
        raise ValueError("expected exactly one of budget_bytes and max_cost")
    hulls = {name: lower_hull(opts) for name, opts in options.items()}
    choice = {name: hull[0] for name, hull in hulls.items()}
    n_bytes = sum(o.n_bytes for o in choice.values())
    cost = sum(o.cost for o in choice.values())
    if budget_bytes is not None and n_bytes > budget_bytes:
        raise UserError(f"a budget of {budget_bytes} bytes is below the smallest recipe the menu allows "
                        f"({n_bytes} bytes, every tensor at its fewest-bytes type); expected at least {n_bytes}")
    at = dict.fromkeys(hulls, 0)
    heap = [(_slope(hull, 0), name) for name, hull in hulls.items() if len(hull) > 1]
    heapq.heapify(heap)
    while heap and (max_cost is None or cost > max_cost):
        _, name = heapq.heappop(heap)
        hull, i = hulls[name], at[name]
        step = hull[i + 1].n_bytes - hull[i].n_bytes
        if budget_bytes is not None and n_bytes + step > budget_bytes:
            break
        n_bytes, cost = n_bytes + step, cost + hull[i + 1].cost - hull[i].cost
        at[name] = i + 1
        choice[name] = hull[i + 1]
        if i + 2 < len(hull):
            heapq.heappush(heap, (_slope(hull, i + 1), name))
    if max_cost is not None and cost > max_cost:
        raise Unreachable(f"no recipe from the menu reaches a predicted cost of {max_cost:.6g}: every tensor at its "
                          f"most accurate type predicts {cost:.6g}", cost)
    if budget_bytes is None:
        return Allocation(choice, n_bytes, sum(o.cost for o in choice.values()))
    # the knapsack's two greedy fills, the better kept: by drop per byte (many small moves), and by
    # largest drop (one move that uses the bytes left better than several steep small ones)
    fills = [_fill(options, choice, n_bytes, budget_bytes, per_byte) for per_byte in (True, False)]
    return min(fills, key=lambda alloc: (alloc.cost, alloc.n_bytes))


def _fill(options: dict[str, list[Option]], start: dict[str, Option], n_bytes: int, budget_bytes: int,
          per_byte: bool) -> Allocation:
    """Spend the bytes the Lagrangian order left: repeatedly the move with the steepest cost drop per
    byte (``per_byte``) or the largest cost drop, among all moves to an undominated option that still
    fit (a smaller hull step, or a point off the hull)."""
    frontiers = {name: _frontier(opts) for name, opts in options.items()}
    choice = dict(start)
    while True:
        best = None
        for name, front in frontiers.items():
            current = choice[name]
            for point in front:
                extra = point.n_bytes - current.n_bytes
                if extra > 0 and point.cost < current.cost and n_bytes + extra <= budget_bytes:
                    key = ((point.cost - current.cost) / (extra if per_byte else 1), name)
                    if best is None or key < best[0]:
                        best = (key, name, point)
        if best is None:
            return Allocation(choice, n_bytes, sum(o.cost for o in choice.values()))
        _, name, point = best
        n_bytes += point.n_bytes - choice[name].n_bytes
        choice[name] = point


def raise_options(opts: dict[str, list[Option]], start: dict[str, str],
                  n_elements: dict[str, int]) -> tuple[dict[str, list[Option]], list[str]]:
    """A measured remedy's choices: per tensor its type in the build before (``start``, actual
    types) and the options with more bytes and less predicted cost; raising only. A tensor whose
    starting type no record measured keeps it (its cost there is unknown; its bytes from the type's
    block layout): those tensors are returned too."""
    found, unmeasured = {}, []
    for name, choices in opts.items():
        if name not in start:
            raise UserError(f"tensor {name}: the build before it has no such tensor; expected the build of the same "
                            "reference whose tensor types the remedy raises from")
        at = next((o for o in choices if o.type == start[name]), None)
        if at is None:
            unmeasured.append(name)
            found[name] = [Option(start[name], round(bits_per_weight(start[name]) * n_elements[name] / 8), 0.0)]
            continue
        found[name] = [at, *(o for o in choices if o.n_bytes > at.n_bytes and o.cost < at.cost)]
    return found, unmeasured


# ---------------------------------------------------------------- budgets and comparison

def _elements(records: list[dict[str, Any]]) -> dict[str, int]:
    return {name: entry["n_elements"] for name, entry in records[0]["tensors"].items()}


def budget_from_census(census: dict[str, Any], records: list[dict[str, Any]]) -> int:
    """Bytes the stock build's census gives the records' tensors (the same tensors, at the census'
    actual types; bytes from the type's block layout, as llama-quantize stores them)."""
    types = census["tensor_types"]
    total = 0
    for name, n_elements in _elements(records).items():
        if name not in types:
            raise UserError(f"the census of {census.get('quant')} has no tensor {name}; expected the stock build "
                            "of the same model")
        total += round(bits_per_weight(types[name]) * n_elements / 8)
    return total


def budget_from_bpw(target: float, reference, records: list[dict[str, Any]]) -> int:
    """Bytes for the records' tensors so that the whole file has ``target`` bits per weight over all
    the reference's elements (``reference``: a GGUFHeader): what the tensors that are not quantized
    keep (at their reference bytes) is taken off."""
    names = set(records[0]["tensors"])
    total_elements = sum(t.n_elements for t in reference.tensors.values())
    kept = sum(t.n_bytes for name, t in reference.tensors.items() if name not in names)
    return math.floor(target * total_elements / 8) - kept


def moved(assignment: dict[str, str], stock_census: dict[str, Any]) -> dict[str, str]:
    """Per tensor 'up', 'down' or 'same': its chosen type's bits per weight against the stock build's."""
    stock = stock_census["tensor_types"]
    found = {}
    for name, ttype in assignment.items():
        ours, theirs = bits_per_weight(ttype), bits_per_weight(stock[name])
        found[name] = "up" if ours > theirs else "down" if ours < theirs else "same"
    return found


# ---------------------------------------------------------------- CLI

def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err}); expected the complete output of its job") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def recipe(records: list[dict[str, Any]], probes: dict[str, Any], reference, objective: dict[str, Any],
           census: dict[str, Any] | None = None, allowance_pct: float | None = None) -> dict[str, Any]:
    """The recipe record of an auto build (checked inputs; ``reference`` a GGUFHeader; ``census``
    the stock build's for a ``bytes_of`` objective, the build before for a ``raise_from`` one, which
    may add ``allowance_pct`` percent to its bytes). Types that reproduce a tensor are no option for
    it (but for the type a raised tensor starts from)."""
    calibration = calibrate(records, probes)
    exclude = reproducing(records)
    start = (census or {}).get("tensor_types") if "raise_from" in objective else None
    opts = options(records, probes, {g: c["alpha"] for g, c in calibration.items()}, exclude, start)
    base = probes["base"]["kld_mean"]
    unmeasured = None
    if start is not None:
        opts, unmeasured = raise_options(opts, start, _elements(records))
        start_bytes = sum(choices[0].n_bytes for choices in opts.values())
        budget = math.floor(start_bytes * (1 + allowance_pct / 100))
    elif "bytes_of" in objective:
        budget = budget_from_census(census, records)
    elif "target_bpw" in objective:
        budget = budget_from_bpw(objective["target_bpw"], reference, records)
    else:
        budget = None
    try:
        alloc = (allocate(opts, budget_bytes=budget) if budget is not None
                 else allocate(opts, max_cost=objective["max_mean_kld"] - base))
    except Unreachable as err:
        raise UserError(f"max_mean_kld {objective['max_mean_kld']}: no recipe from the menu is predicted to reach it; "
                        f"every tensor at its most accurate type predicts {base + err.best_cost:.4f} (the base probe "
                        f"measured {base:.4f}); expected a larger max_mean_kld or higher types in the menu") from None
    types = {name: option.type for name, option in alloc.choice.items()}
    kept = sum(t.n_bytes for name, t in reference.tensors.items() if name not in types)
    total_elements = sum(t.n_elements for t in reference.tensors.values())
    directions = moved(types, census) if census is not None else None
    return {
        "objective": objective,
        "excluded": dict(sorted(Counter(t for types in exclude.values() for t in types).items())),
        "budget_bytes": budget,
        "n_bytes": alloc.n_bytes,
        "bits_per_weight": round(8 * (alloc.n_bytes + kept) / total_elements, 4),
        "base_kld_mean": base,
        "predicted_kld_mean": base + alloc.cost,
        "alphas": calibration,
        "tensors": {name: {"type": o.type, "n_bytes": o.n_bytes, "cost": o.cost} for name, o in alloc.choice.items()},
        "moved": None if directions is None else {
            way: [name for name, d in directions.items() if d == way] for way in ("up", "down")},
        "types": dict(sorted(Counter(types.values()).items())),
        **({} if start is None else {
            "allowance_pct": allowance_pct,
            "start_bytes": start_bytes,
            "start_predicted_kld_mean": base + sum(choices[0].cost for choices in opts.values()),
            "unmeasured": unmeasured}),
    }


def main(argv: list[str] | None = None) -> None:
    from workflow_scripts.gguf_header import read_gguf_header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sensitivity", type=Path, nargs="+", required=True, help="one record per menu type")
    parser.add_argument("--probes", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True, help="the F16/BF16 reference GGUF the records measured")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--bytes-of-census", type=Path, help="the stock build's census: match its bytes")
    target.add_argument("--target-bpw", type=float, help="bits per weight of the whole file")
    target.add_argument("--max-mean-kld", type=float, help="fewest bytes predicted to reach this mean KLD")
    target.add_argument("--raise-from", type=Path, help="a measured remedy: the census (or remedy plan) of the "
                        "build before it, whose actual types it raises from")
    parser.add_argument("--allowance-pct", type=float, help="with --raise-from: bytes it may add, in percent")
    parser.add_argument("--build-before", help="with --raise-from: the name of the build it raises from")
    parser.add_argument("--build", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tensor-types", type=Path, required=True)
    ns = parser.parse_args(argv)
    named = complete_records({str(path): _load_json(path) for path in ns.sensitivity})
    probes = _load_json(ns.probes)
    reference = read_gguf_header(ns.reference)
    check_inputs(named, str(ns.probes), probes, str(ns.reference),
                 {name: t.n_elements for name, t in reference.tensors.items()})
    records = list(named.values())
    if any((ns.raise_from is None) != (value is None) for value in (ns.allowance_pct, ns.build_before)):
        parser.error("--raise-from, --allowance-pct and --build-before go together")
    census = _load_json(ns.bytes_of_census) if ns.bytes_of_census else None
    if census is not None and not isinstance(census.get("tensor_types"), dict):
        raise UserError(f"{ns.bytes_of_census}: expected a census with 'tensor_types'")
    if ns.raise_from:
        census = {"tensor_types": previous_types(ns.raise_from)}
        objective = {"raise_from": ns.build_before}
    else:
        objective = ({"bytes_of": census.get("quant")} if census is not None
                     else {"target_bpw": ns.target_bpw} if ns.target_bpw is not None
                     else {"max_mean_kld": ns.max_mean_kld})
    result = {"build": ns.build, **recipe(records, probes, reference, objective, census, ns.allowance_pct)}
    atomic_write_text(ns.tensor_types, tensor_type_lines({n: t["type"] for n, t in result["tensors"].items()}))
    atomic_write_text(ns.out, json.dumps(result, indent=2) + "\n")
    moves = (f"; moved up {len(result['moved']['up'])}, down {len(result['moved']['down'])}"
             if result["moved"] is not None else "")
    print(f"{ns.build}: {len(result['tensors'])} tensors, {result['n_bytes']} bytes (budget {result['budget_bytes']}), "
          f"{result['bits_per_weight']} bpw, predicted mean KLD {result['predicted_kld_mean']:.4f} "
          f"(base {result['base_kld_mean']:.4f}); " + ", ".join(f"{t} x{n}" for t, n in result["types"].items()) + moves)


if __name__ == "__main__":
    run_cli(main)
