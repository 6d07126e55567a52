"""The fuzzed front door: seeded mutations of valid request bodies through a guarded codec, drawn by hypothesis.

Every mutation must end as an accepted input or a refusal with a reason code (`Rejected.code`); any other
exception is a crash a client could trigger, and any accepted input that is not finite would reach the model.
The mutations are the ones that break front doors: bit flips, truncations, splices of two bodies, inserted
bytes, image headers that declare huge sizes, malformed JSON and UTF-8, and JSON numbers replaced by NaN,
Infinity or values far out of range. hypothesis draws them from a fixed seed, so a run is reproducible and a
finding can be replayed from its index.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from lab2prod.core.errors import Lab2ProdError
from lab2prod.core.inputs import tensors
from lab2prod.core.results import gate
from lab2prod.kinds.guard import Rejected

__all__ = ["MUTATIONS", "FuzzReport", "mutate", "mutations", "fuzz_codec", "fuzz_gate"]

MUTATIONS = ("bit_flips", "truncate", "splice", "insert_bytes", "huge_header", "json_break", "bad_utf8",
             "json_numbers")
_UNBOUNDED = ("insert_bytes", "bit_flips", "splice")
_OUTLIERS = ("NaN", "Infinity", "-Infinity", "1e308", "-1e308", "123456789012345678901234567890")


@dataclass
class FuzzReport:
    """What the mutations did: counts by outcome, refusals by reason code, and the first crashes (mutation,
    exception) to replay."""

    mutations: int = 0
    accepted: int = 0
    refused: Counter = field(default_factory=Counter)
    by_mutation: Counter = field(default_factory=Counter)
    crashes: list[dict] = field(default_factory=list)
    crash_count: int = 0
    not_finite_accepted: int = 0
    refusals_without_code: int = 0

    def summary(self) -> dict:
        return {"mutations": self.mutations, "accepted": self.accepted, "refused": sum(self.refused.values()),
                "crashes": self.crash_count, "not_finite_accepted": self.not_finite_accepted,
                "refusals_without_code": self.refusals_without_code, "codes": dict(self.refused.most_common()),
                "by_mutation": dict(self.by_mutation), "first_crashes": self.crashes[:5]}


def _png_with_size(body: bytes, width: int, height: int) -> bytes:
    """A PNG whose header declares `width` x `height` (its CRC fixed, so only the size lies)."""
    if not body.startswith(b"\x89PNG\r\n\x1a\n") or body[12:16] != b"IHDR":
        return body
    header = struct.pack(">II", width, height) + body[24:29]
    return body[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + body[33:]


def _json_numbers(body: bytes, outlier: str, every: int) -> bytes:
    """The JSON body with every `every`-th number replaced by `outlier` (NaN, Infinity, 1e308, ...), as Python's
    json module writes and reads them."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    count = [0]

    def swap(item):
        if isinstance(item, dict):
            return {k: swap(v) for k, v in item.items()}
        if isinstance(item, list):
            return [swap(v) for v in item]
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            count[0] += 1
            return _Raw(outlier) if count[0] % every == 0 else item
        return item

    return _dump(swap(value)).encode("utf-8")


class _Raw(str):
    """A JSON token written as is (NaN, a number too large for a float)."""


def _dump(value) -> str:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


@st.composite
def mutate(draw, good: list[bytes], kind: str) -> tuple[str, bytes]:
    """One mutation of kind `kind` (one of MUTATIONS) of one valid body: (kind, mutated bytes)."""
    body = draw(st.sampled_from(good))
    size = max(len(body), 1)
    if kind == "bit_flips":
        data = bytearray(body)
        for bit in draw(st.lists(st.integers(0, size * 8 - 1), min_size=1, max_size=8)):
            if bit // 8 < len(data):
                data[bit // 8] ^= 1 << (bit % 8)
        return kind, bytes(data)
    if kind == "truncate":
        return kind, body[:draw(st.integers(0, size - 1))]
    if kind == "splice":
        other = draw(st.sampled_from(good))
        return kind, body[:draw(st.integers(0, size))] + other[draw(st.integers(0, max(len(other), 1))):]
    if kind == "insert_bytes":
        at = draw(st.integers(0, size))
        return kind, body[:at] + draw(st.binary(min_size=1, max_size=64)) + body[at:]
    if kind == "huge_header":
        width, height = draw(st.sampled_from([(100_000, 100_000), (2**31 - 1, 1), (1, 2**31 - 1), (0, 0),
                                              (65_535, 65_535)]))
        if body.startswith(b"\x89PNG"):
            return kind, _png_with_size(body, width, height)
        return kind, body.replace(b"{", b'{"padding": "' + b"x" * draw(st.integers(1, 4096)) + b'", ', 1)
    if kind == "json_break":
        at = draw(st.integers(0, size))
        return kind, body[:at] + draw(st.sampled_from([b"{", b"}", b'"', b",", b"]", b"[", b":", b"\\"])) + body[at:]
    if kind == "bad_utf8":
        at = draw(st.integers(0, size))
        return kind, body[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\xbc",
                                                       b"\x00"])) + body[at:]
    return kind, _json_numbers(body, draw(st.sampled_from(_OUTLIERS)), draw(st.integers(1, 5)))


def _finite(value) -> bool:
    try:
        return all(bool(torch.isfinite(t).all()) for t in tensors(value) if t.is_floating_point())
    except (TypeError, AttributeError):
        return True  # not tensors (a tokenizer's encoding as lists): nothing to check here


def mutations(good: list[bytes], count: int = 10_000, seed: int = 0) -> list[tuple[str, bytes]]:
    """`count` seeded mutations (kind, body) of the valid bodies `good`, drawn by hypothesis from `seed`: the same
    seed gives the same bodies. One hypothesis run per kind of mutation, each its share of `count` (drawn from one
    list, hypothesis would favour the kinds listed first)."""
    if not good:
        raise Lab2ProdError("fuzzing needs at least one valid request body to mutate")
    drawn: list[tuple[str, bytes]] = []

    def keep(case: tuple[str, bytes]) -> None:
        drawn.append(case)

    def run(kind: str, examples: int, run_seed: int) -> None:
        test = settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                        suppress_health_check=list(HealthCheck))(given(mutate(good, kind))(keep))
        hypothesis_seed(run_seed)(test)()

    for index, kind in enumerate(MUTATIONS):
        run(kind, count // len(MUTATIONS) + (index < count % len(MUTATIONS)), seed * 1000 + index)
    # a kind with few distinct mutations of these bodies (a short text has few truncations) ends early, as
    # hypothesis draws no duplicates: the kinds without bound make up the rest
    for extra in range(100):
        if len(drawn) >= count:
            break
        run(_UNBOUNDED[extra % len(_UNBOUNDED)], count - len(drawn), seed * 1000 + len(MUTATIONS) + extra)
    return drawn[:count]


def fuzz_codec(codec, good: list[bytes], count: int = 10_000, seed: int = 0) -> FuzzReport:
    """Send `count` mutations of the valid bodies `good` (`mutations`) through `codec` (a guarded codec of
    lab2prod.kinds.codec) in process."""
    if codec.guard is None:
        raise Lab2ProdError("fuzz_codec was given a codec without its guard; build it with codec_for(loaded) "
                            "(guarded=True), as a server runs it")
    report = FuzzReport()
    for kind, body in mutations(good, count, seed):
        report.mutations += 1
        report.by_mutation[kind] += 1
        try:
            value = codec(body)
        except Rejected as refused:
            report.refused[refused.code or ""] += 1
            report.refusals_without_code += not refused.code
            continue
        except Exception as exc:  # a crash a client could trigger: what this fuzz is for
            report.crash_count += 1
            if len(report.crashes) < 20:
                report.crashes.append({"mutation": kind, "error": f"{type(exc).__name__}: {str(exc)[:120]}",
                                       "body_head": body[:48].hex()})
            continue
        report.accepted += 1
        report.not_finite_accepted += not _finite(value)
    return report


def fuzz_gate(report: FuzzReport, name: str = "resilience:fuzz", at_least: int = 10_000) -> dict:
    """The in-process part of the front-door gate: at least `at_least` mutations, no crash, every refusal with
    a reason code, nothing non-finite accepted."""
    problems = []
    if report.mutations < at_least:
        problems.append(f"only {report.mutations} mutations (wanted {at_least})")
    if report.crash_count:
        first = report.crashes[0]
        problems.append(f"{report.crash_count} crashed the codec (first: {first['mutation']}: {first['error']})")
    if report.refusals_without_code:
        problems.append(f"{report.refusals_without_code} refusals without a reason code")
    if report.not_finite_accepted:
        problems.append(f"{report.not_finite_accepted} accepted inputs hold NaN or Infinity")
    detail = "; ".join(problems) or (f"{report.mutations} mutations: {report.accepted} accepted, "
                                     f"{sum(report.refused.values())} refused with {len(report.refused)} reason codes")
    return gate(name, not problems, report.crash_count, 0, detail)
