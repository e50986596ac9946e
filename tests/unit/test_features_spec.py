"""The feature spec: 240 unique, ordered, documented features with bounded warm-ups and a stable hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from types import MappingProxyType

import pytest

from ml.features import FEATURE_SPEC, FeatureSpec, FeatureSpecMismatchError
from ml.features.indicators import REGISTRY
from ml.features.spec import GROUPS, MAX_WARMUP

DOCS = Path(__file__).resolve().parents[2] / "docs" / "FEATURES.md"

# Changing the spec is a deliberate act: bump SPEC_VERSION, retrain, and update this pin and
# docs/FEATURES.md. Models store the hash and refuse features with another one.
PINNED_HASH = "1e490677b11c5b4b375841f9add214ccaa144ea3fcd65a6a89c3a79b1c5e40aa"


def test_240_uniquely_named_features_in_known_groups() -> None:
    spec = FEATURE_SPEC
    assert spec.n_features == 240 == len(spec.names) == len(set(spec.names))
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) for name in spec.names)
    assert {f.group for f in spec.features} == set(GROUPS)
    assert [spec.index(name) for name in spec.names] == list(range(240))


def test_warmups_are_bounded_and_the_live_window_follows() -> None:
    spec = FEATURE_SPEC
    assert all(0 <= f.warmup <= MAX_WARMUP for f in spec.features)
    assert spec.warmup == 200
    assert spec.context == 96
    assert spec.window == 296


def test_every_kind_has_an_implementation_and_every_implementation_is_used() -> None:
    kinds = {f.kind for f in FEATURE_SPEC.features}
    assert kinds == set(REGISTRY)


def test_no_raw_time_or_future_inputs() -> None:
    forbidden = re.compile(r"time(stamp)?$|_ms$|open_time|epoch|future|target|label|next|lead")
    assert not [n for n in FEATURE_SPEC.names if forbidden.search(n)]
    for f in FEATURE_SPEC.features:
        if f.group == "time":
            # Only bounded cyclic encodings of the clock.
            assert f.kind == "time"
            assert f.params["fn"] in ("sin", "cos")
        # A shift into the past is spelled "lag" and must be positive; nothing reads ahead.
        lag = f.params.get("lag", 0)
        assert isinstance(lag, int)
        assert lag >= 0


def test_hash_is_sha256_of_the_canonical_json_and_pinned() -> None:
    spec = FEATURE_SPEC
    doc = json.loads(spec.canonical_json())
    assert [f["name"] for f in doc["features"]] == list(spec.names)
    assert spec.hash == hashlib.sha256(spec.canonical_json().encode()).hexdigest()
    assert spec.hash == PINNED_HASH, (
        "the feature spec changed: bump SPEC_VERSION, update the pin and the docs"
    )


def test_hash_changes_with_order_params_warmup_or_version() -> None:
    spec = FEATURE_SPEC
    feats = list(spec.features)
    swapped = FeatureSpec(spec.version, (feats[1], feats[0], *feats[2:]))
    first = feats[0]
    reparam = dataclasses.replace(first, params=MappingProxyType({**first.params, "k": 2}))
    rewarm = dataclasses.replace(first, warmup=first.warmup + 1)
    variants = [
        swapped,
        FeatureSpec(spec.version, (reparam, *feats[1:])),
        FeatureSpec(spec.version, (rewarm, *feats[1:])),
        FeatureSpec("0.0.0", spec.features),
    ]
    hashes = {spec.hash, *(v.hash for v in variants)}
    assert len(hashes) == 5
    # Equal content, equal hash: the hash depends on nothing but the spec.
    assert FeatureSpec(spec.version, tuple(feats)).hash == spec.hash


def test_duplicate_names_are_refused() -> None:
    feats = FEATURE_SPEC.features
    with pytest.raises(ValueError, match="unique"):
        FeatureSpec("x", (feats[0], feats[0]))


def test_check_hash_refuses_another_spec() -> None:
    FEATURE_SPEC.check_hash(FEATURE_SPEC.hash, "the model")
    with pytest.raises(FeatureSpecMismatchError, match="refusing"):
        FEATURE_SPEC.check_hash("0" * 64, "the model")


def test_docs_cover_every_kind_and_state_the_hash() -> None:
    text = DOCS.read_text()
    missing = sorted(k for k in {f.kind for f in FEATURE_SPEC.features} if f"`{k}`" not in text)
    assert not missing, f"docs/FEATURES.md lacks {missing}"
    assert FEATURE_SPEC.hash in text
    for group, feats in FEATURE_SPEC.by_group().items():
        assert f"## {group}" in text.lower() or f"`{group}`" in text
        assert f"{group}` ({len(feats)})" in text
