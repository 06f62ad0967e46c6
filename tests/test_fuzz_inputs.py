"""Seeded fuzzing of every input file kind through the readers and the CLI.

Seeds are small real files (tests/fixtures, ../shared/realdata, ../shared/oracle, read in place)
plus a few generated here (.npy, binaryproto, .mat of every class); each case is one seed with a
few random mutations (bit flips, boundary values, truncation, insertion, repeated chunks; for
text: line and token edits, non-UTF-8 bytes). The promise checked for every case: the reader
either succeeds or raises an :class:`~rll_repro.errors.RLLReproError` (the CLI: exit 0 or 2 with
one stderr line) -- never another exception (a traceback), never a hang, never a crash, never a
huge allocation.

Every kind runs in its own child process (``python test_fuzz_inputs.py worker ...``) under a
memory limit (RLIMIT_AS) with a lowered RLL_REPRO_MAX_BLOB_BYTES, a per-case alarm and a
per-kind timeout: a segmentation fault (scipy's v5 reader), a C-level hang (h5py) or an
allocation a header asked for fails this test with the kind and case number instead of killing
pytest. A failing case is reproducible: ``python tests/test_fuzz_inputs.py worker KIND SEED I 1 DIR``.

Default run: ~250 cases per kind (about a minute); ``-m slow``: 2,000 per kind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("RLL_REPRO_SHARED", REPO.parent / "shared"))
KINDS = ("caffemodel", "solverstate", "binaryproto", "net_prototxt", "solver_prototxt", "mat_v5", "mat_v73",
         "npz", "npy")
SEED_BYTES = 256 * 1024  # small seeds keep a case at a few milliseconds
SEEDS_PER_KIND = 24
CASE_ALARM_S = 20
CHILD_MEMORY = 4 << 30  # RLIMIT_AS of a worker: numpy/scipy/h5py need ~1 GiB of address space
CHILD_BLOB_LIMIT = str(256 << 20)  # RLL_REPRO_MAX_BLOB_BYTES in a worker
CLI_EVERY = 10  # every 10th case also goes through rll_repro.cli.main


# ------------------------------------------------------------------------------------------------
# seeds


def _files(pattern: str) -> list[Path]:
    roots = [HERE / "fixtures", SHARED / "realdata", SHARED / "oracle"]
    found = sorted({p for root in roots if root.exists() for p in root.rglob(pattern)
                    if p.is_file() and 0 < p.stat().st_size <= SEED_BYTES})
    return found


def _spread(paths: list[Path], n: int = SEEDS_PER_KIND) -> list[Path]:
    """At most n of the paths, spread evenly over the sorted list (different folders, kinds)."""
    if len(paths) <= n:
        return paths
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def _generated(kind: str, folder: Path) -> list[Path]:
    """Seeds written here, so every kind has some (and the .npy/.mat ones cover every layout)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if kind == "npy":
        arrays = [np.arange(12, dtype="<f4").reshape(3, 4), np.asfortranarray(np.ones((2, 3), ">f8")),
                  np.float64(2.5), np.zeros((0, 4), np.int16), np.array(["ab", "c"]), np.array([1 + 2j]),
                  np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8", (2,))])]
        for i, a in enumerate(arrays):
            np.save(folder / f"g{i}.npy", a)
            out.append(folder / f"g{i}.npy")
    elif kind == "npz":
        np.savez(folder / "g0.npz", features=np.ones((4, 3), np.float32), labels=np.arange(4))
        np.savez_compressed(folder / "g1.npz", **{"fc/0": np.ones((2, 2), np.float32), "fc/1": np.zeros(2)})
        out += [folder / "g0.npz", folder / "g1.npz"]
    elif kind == "binaryproto":
        from rll_repro.caffe.io import write_binaryproto

        write_binaryproto(folder / "g0.binaryproto", np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4), legacy_shape=True)
        write_binaryproto(folder / "g1.binaryproto", np.ones((3, 5), np.float32))
        out += [folder / "g0.binaryproto", folder / "g1.binaryproto"]
    elif kind in ("mat_v5", "mat_v73"):
        import scipy.sparse

        from rll_repro.matfile import savemat

        cell = np.empty((2, 2), dtype=object)
        cell[:] = [["a.jpg", "b.jpg"], [np.ones((1, 4)), "c"]]
        values = {"TrainImagePathBoxCell": ["x/1.jpg", "x/2.jpg", "y/3.jpg"], "class_ids": np.array([1.0, 1.0, 2.0]),
                  "query_num": 1.0, "m": np.arange(6, dtype=np.int32).reshape(2, 3), "s": {"f": "t", "g": np.eye(2)},
                  "c": cell, "sp": scipy.sparse.csc_matrix(np.eye(3)), "z": np.array([[1 + 1j]]), "b": np.array([[True]]),
                  "e": np.zeros((0, 2)), "st": "text"}
        version = "v5" if kind == "mat_v5" else "v7.3"
        savemat(folder / "g0.mat", values, version=version)
        savemat(folder / "g1.mat", {"ImagePathBoxCell": ["p.jpg"] * 5, "class_ids": np.arange(5.0)}, version=version)
        out += [folder / "g0.mat", folder / "g1.mat"]
        if kind == "mat_v5":
            import scipy.io

            scipy.io.savemat(folder / "g2.mat", {"c": cell, "v": np.arange(5.0)}, do_compression=False)
            out.append(folder / "g2.mat")
    return out


def _is_v5(path: Path) -> bool:
    head = path.read_bytes()[:528]
    return head[126:128] in (b"IM", b"MI") and head[512:520] != b"\x89HDF\r\n\x1a\n"


def _is_v73(path: Path) -> bool:
    return path.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"


def seeds(kind: str, folder: Path) -> list[Path]:
    if kind == "caffemodel":
        found = _files("*.caffemodel")
    elif kind == "solverstate":
        found = _files("*.solverstate")
    elif kind == "binaryproto":
        found = _files("*.binaryproto")
    elif kind in ("net_prototxt", "solver_prototxt"):
        protos = _files("*.prototxt")
        solver = [p for p in protos if "solver" in p.name.lower()]
        found = solver if kind == "solver_prototxt" else [p for p in protos if p not in solver]
    elif kind == "mat_v5":
        found = [p for p in _files("*.mat") if _is_v5(p)]
    elif kind == "mat_v73":
        found = [p for p in _files("*.mat") if _is_v73(p)]
    elif kind == "npz":
        found = _files("*.npz")
    else:
        found = _files("*.npy")
    chosen = _spread(found) + _generated(kind, folder / "generated")
    if kind == "mat_v5":  # and their inflated forms: mutations then reach the element structure
        from rll_repro.mat5_structure import check_v5

        for i, path in enumerate(list(chosen)):
            plain = folder / "generated" / f"inflated{i}.mat"
            plain.write_bytes(check_v5(path.read_bytes(), str(path)))
            chosen.append(plain)
    return chosen


# ------------------------------------------------------------------------------------------------
# mutations

_BOUNDARY_WORDS = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x00\x80", b"\xff\xff\xff\x7f",
                   b"\x01\x00\x00\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x80\x80\x80\x80\x80\x80"]
_TOKENS = ["-1", "0", "1e309", "nan", "-inf", "99999999999999999999999", "-2147483649", "4294967296", "1.5",
           '"\\xff"', '""', "{", "}", "layer {", "true", "TRAIN", "#", "//", ":", '"a"' * 50, "x" * 3000]


def mutate_binary(data: bytes, rng: random.Random, keep: int = 0) -> bytes:
    """A few random edits after the first ``keep`` bytes (headers a reader would refuse at once)."""
    d = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        op = rng.random()
        lo = min(keep, len(d))
        if op < 0.35 and len(d) > lo:
            i = rng.randrange(lo, len(d))
            d[i] ^= 1 << rng.randrange(8)
        elif op < 0.55 and len(d) > lo:
            i = rng.randrange(lo, len(d))
            d[i] = rng.randrange(256)
        elif op < 0.72 and len(d) > lo + 4:
            i = rng.randrange(lo, len(d) - 4)
            word = rng.choice(_BOUNDARY_WORDS)
            d[i:i + len(word)] = word
        elif op < 0.84:
            d = d[:rng.randrange(lo, len(d) + 1)]
        elif op < 0.93:
            i = rng.randrange(lo, len(d) + 1)
            d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24)))
        elif len(d) > lo + 2:
            i = rng.randrange(lo, len(d) - 1)
            j = min(len(d), i + rng.randrange(1, 256))
            d[j:j] = d[i:j] * rng.randrange(1, 4)
    return bytes(d)


def mutate_text(data: bytes, rng: random.Random) -> bytes:
    lines = data.split(b"\n")
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        op = rng.random()
        i = rng.randrange(len(lines)) if lines else 0
        if op < 0.3 and lines:  # replace a number or a value
            words = lines[i].split(b" ")
            k = rng.randrange(len(words))
            words[k] = rng.choice(_TOKENS).encode()
            lines[i] = b" ".join(words)
        elif op < 0.45 and lines:
            del lines[i]
        elif op < 0.6 and lines:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op < 0.72:
            lines.insert(i, rng.choice(_TOKENS).encode())
        elif op < 0.8 and lines:
            lines[i] = lines[i] + bytes([rng.choice((0xff, 0xc3, 0x00, 0xe2, 0x80))])
        else:
            return mutate_binary(b"\n".join(lines), rng)
    return b"\n".join(lines)


def make_case(kind: str, seed_files: list[Path], seed: int, index: int) -> tuple[bytes, str]:
    rng = random.Random(f"{kind}:{seed}:{index}")
    source = rng.choice(seed_files)
    data = source.read_bytes()
    if kind.endswith("prototxt"):
        return mutate_text(data, rng), source.name
    if kind == "npz" and rng.random() < 0.6:
        return mutate_npz_members(data, rng), source.name
    keep = {"mat_v5": 128, "mat_v73": 520, "npy": 0}.get(kind, 0) if rng.random() < 0.8 else 0
    return mutate_binary(data, rng, keep), source.name


def mutate_npz_members(data: bytes, rng: random.Random) -> bytes:
    """The archive re-zipped with one member's .npy bytes mutated (valid CRCs: the .npy reader is
    reached, not only the zip checks)."""
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except Exception:  # noqa: BLE001 - a seed we cannot unpack is mutated as bytes
        return mutate_binary(data, rng)
    if not members:
        return data
    k = rng.randrange(len(members))
    name, raw = members[k]
    members[k] = (name, mutate_binary(raw, rng, keep=rng.choice((0, 10, 10))))
    out = io.BytesIO()
    method = rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(out, "w", compression=method) as archive:
        for name, raw in members:
            archive.writestr(name, raw)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------
# readers (the API a user reaches, as the CLI calls it)


def read_case(kind: str, path: Path) -> None:
    """Read ``path`` as ``kind`` the ways the package does; any result is fine, errors must be ours."""
    from rll_repro.caffe import io as caffe_io
    from rll_repro.caffe.weights import blob_to_array, weights_from_net
    from rll_repro.commands import inspect_

    if kind == "caffemodel":
        net = caffe_io.read_caffemodel(path)
        weights_from_net(net, str(path))
        inspect_.net_report(net, raw_path=path, kind="caffemodel")
    elif kind == "solverstate":
        state = caffe_io.read_solverstate(path)
        for i, blob in enumerate(state.history):
            blob_to_array(blob, f"{path}: history {i}")
        inspect_.solverstate_report(state)
    elif kind == "binaryproto":
        blob = caffe_io.read_binaryproto_blob(path)
        inspect_.binaryproto_report(blob, str(path))
    elif kind == "net_prototxt":
        inspect_.net_report(caffe_io.read_net_prototxt(path), raw_path=path, kind="net_prototxt")
    elif kind == "solver_prototxt":
        inspect_.solver_report(caffe_io.read_solver_prototxt(path))
    elif kind in ("mat_v5", "mat_v73"):
        from rll_repro.data.lists import load_image_list
        from rll_repro.errors import RLLReproError
        from rll_repro.matfile import loadmat

        loadmat(path)
        with contextlib.suppress(RLLReproError):  # most seeds are not image lists: reading is the test
            load_image_list(path)
    elif kind == "npz":
        from rll_repro.eval.extract import load_array
        from rll_repro.fileio import read_npz

        if "features" in read_npz(path):
            load_array(path, "features")
    elif kind == "npy":
        from rll_repro.eval.extract import load_array

        load_array(path)
    if kind in ("caffemodel", "solverstate", "binaryproto", "net_prototxt", "solver_prototxt"):
        caffe_io.read_any(path)


def cli_argv(kind: str, path: Path, folder: Path) -> list[str] | None:
    if kind in ("caffemodel", "solverstate", "binaryproto", "net_prototxt", "solver_prototxt"):
        return ["inspect", "--json", str(path)]
    if kind == "npy":
        return ["eval-features", str(path), str(folder / "labels.npy"), "--protocol", "cub",
                "--out", str(folder / "r.json")]
    if kind == "npz":
        return ["convert", str(path), str(folder / "out.npz")]
    return None


def run_cli(argv: list[str]) -> tuple[int, str]:
    from rll_repro import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


# ------------------------------------------------------------------------------------------------
# the worker (a child process per kind)


class CaseTimeout(BaseException):
    pass


def worker(kind: str, seed: int, start: int, count: int, folder: Path) -> None:
    import resource
    import signal

    import numpy as np

    from rll_repro.errors import RLLReproError

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    def alarm(signum, frame):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, alarm)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "labels.npy", np.arange(12) % 3)
    seed_files = seeds(kind, folder)
    suffix = {"caffemodel": ".caffemodel", "solverstate": ".solverstate", "binaryproto": ".binaryproto",
              "net_prototxt": ".prototxt", "solver_prototxt": ".prototxt", "npz": ".npz", "npy": ".npy"}.get(kind, ".mat")
    print(json.dumps({"seeds": len(seed_files)}), flush=True)
    for index in range(start, start + count):
        data, source = make_case(kind, seed_files, seed, index)
        path = folder / f"case{suffix}"
        path.write_bytes(data)
        record = {"i": index, "source": source}
        signal.alarm(CASE_ALARM_S)
        try:
            read_case(kind, path)
            record["outcome"] = "ok"
        except RLLReproError as exc:
            record["outcome"] = "handled"
            record["message"] = str(exc)[:300]
        except CaseTimeout:
            record.update(outcome="hang", message=f"over {CASE_ALARM_S} s")
        except BaseException as exc:  # noqa: BLE001 - anything else is what this test hunts
            record.update(outcome="traceback", message=f"{type(exc).__name__}: {str(exc)[:300]}",
                          traceback=traceback.format_exc()[-3000:])
        finally:
            signal.alarm(0)
        argv = cli_argv(kind, path, folder) if index % CLI_EVERY == 0 else None
        if argv is not None and record["outcome"] != "hang":
            signal.alarm(CASE_ALARM_S)
            try:
                code, err = run_cli(argv)
                lines = err.strip().splitlines()
                record["cli"] = code
                if code not in (0, 2) or (code == 2 and len(lines) != 1) or "Traceback" in err:
                    record.update(outcome="traceback", message=f"CLI exit {code}: {err[-600:]}")
            except CaseTimeout:
                record.update(outcome="hang", message=f"CLI over {CASE_ALARM_S} s")
            except BaseException as exc:  # noqa: BLE001
                record.update(outcome="traceback", message=f"CLI {type(exc).__name__}: {str(exc)[:300]}",
                              traceback=traceback.format_exc()[-3000:])
            finally:
                signal.alarm(0)
        print(json.dumps(record), flush=True)
    print(json.dumps({"max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)


# ------------------------------------------------------------------------------------------------
# the tests


def fuzz_kind(kind: str, count: int, seed: int, timeout_s: float) -> dict:
    """Run a worker for ``count`` cases of ``kind``; the outcome counts, failures and peak memory."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz_{kind}_") as folder:
        env = {**os.environ, "RLL_REPRO_MAX_BLOB_BYTES": CHILD_BLOB_LIMIT, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        try:
            run = subprocess.run([sys.executable, __file__, "worker", kind, str(seed), "0", str(count), folder],
                                 capture_output=True, text=True, timeout=timeout_s, env=env, cwd=str(REPO))
            stdout, returncode, timed_out = run.stdout, run.returncode, False
            stderr = run.stderr
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            returncode, timed_out = None, True
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    cases = [r for r in records if "i" in r]
    summary = {"kind": kind, "cases": len(cases), "seeds": next((r["seeds"] for r in records if "seeds" in r), 0),
               "ok": 0, "handled": 0, "traceback": 0, "hang": 0, "cli": sum("cli" in r for r in cases),
               "max_rss_mb": next((r["max_rss_kb"] // 1024 for r in records if "max_rss_kb" in r), None),
               "failures": [r for r in cases if r["outcome"] in ("traceback", "hang")]}
    for r in cases:
        summary[r["outcome"]] += 1
    if timed_out or returncode != 0:
        last = cases[-1]["i"] if cases else -1
        what = "timed out (a hang)" if timed_out else f"died with exit {returncode}"
        if returncode is not None and returncode < 0:
            what = f"was killed by signal {-returncode} (a crash)"
        summary["failures"].append({"i": last + 1, "outcome": "crash",
                                    "message": f"the worker {what} at case {last + 1}: {stderr[-1500:]}"})
    return summary


def _report(summaries: list[dict]) -> str:
    rows = [f"{'kind':16} {'seeds':>5} {'cases':>6} {'ok':>6} {'handled':>8} {'tracebk':>8} {'hang':>5} "
            f"{'cli':>5} {'rss MB':>7}"]
    for s in summaries:
        rows.append(f"{s['kind']:16} {s['seeds']:5} {s['cases']:6} {s['ok']:6} {s['handled']:8} {s['traceback']:8} "
                    f"{s['hang']:5} {s['cli']:5} {s['max_rss_mb'] or 0:7}")
    return "\n".join(rows)


def _check(summaries: list[dict], count: int, seed: int) -> None:
    print("\n" + _report(summaries))
    problems = []
    for s in summaries:
        for f in s["failures"][:3]:
            problems.append(f"{s['kind']} case {f['i']} (seed {seed}, from {f.get('source', '?')}): "
                            f"{f['outcome']}: {f['message']}\n{f.get('traceback', '')}")
        if s["cases"] != count and not s["failures"]:
            problems.append(f"{s['kind']}: ran {s['cases']} of {count} cases")
        if s["seeds"] == 0:
            problems.append(f"{s['kind']}: no seed files")
        if s["max_rss_mb"] is not None and s["max_rss_mb"] > 2048:
            problems.append(f"{s['kind']}: peak memory {s['max_rss_mb']} MB")
    assert not problems, "\n".join(problems[:12])


@pytest.mark.parametrize("kind", KINDS)
def test_fuzzed_inputs_are_read_or_refused_in_one_line(kind):
    count = 250
    _check([fuzz_kind(kind, count, seed=2026, timeout_s=240)], count, 2026)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_fuzzed_inputs_long_run(kind):
    count = 2000
    _check([fuzz_kind(kind, count, seed=7, timeout_s=1800)], count, 7)


def test_fuzzed_files_through_the_console_entry_point(tmp_path):
    """A sample of mutated files through the installed entry point itself (a fresh interpreter)."""
    import numpy as np

    np.save(tmp_path / "labels.npy", np.arange(12) % 3)
    for kind in ("caffemodel", "npy"):
        seed_files = seeds(kind, tmp_path / kind)
        data, _ = make_case(kind, seed_files, 11, 0)
        path = tmp_path / f"case_{kind}{'.npy' if kind == 'npy' else '.bin'}"
        path.write_bytes(data)
        argv = cli_argv(kind, path, tmp_path)
        run = subprocess.run([sys.executable, "-m", "rll_repro", *argv], capture_output=True, text=True,
                             timeout=180, cwd=str(REPO))
        assert run.returncode in (0, 2), run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        if run.returncode == 2:
            assert len(run.stderr.strip().splitlines()) == 1 and str(path) in run.stderr


if __name__ == "__main__" and len(sys.argv) == 7 and sys.argv[1] == "worker":
    sys.path.insert(0, str(REPO))
    worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
