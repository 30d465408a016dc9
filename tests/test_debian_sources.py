"""The Java and Go corpora: unpacked from a Debian package (here a small one built by the test), cached with a
manifest, test code left out, split by path; corpus.load reaches them; an unfetched language says how to fetch."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import pytest

from codecircuits import InputError
from codecircuits import corpus as corpus_mod
from codecircuits import debian_sources as ds

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian/Ubuntu)")


def _deb(tmp_path, name, files: dict[str, str], zip_at: str | None = None):
    """A minimal .deb holding ``files`` (or a zip of them at ``zip_at``)."""
    root = tmp_path / name
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    if zip_at:
        z = root / zip_at
        z.parent.mkdir(parents=True)
        with zipfile.ZipFile(z, "w") as zf:
            for rel, text in files.items():
                zf.writestr(rel, text)
    else:
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    out = tmp_path / f"{name}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(root), str(out)], check=True, capture_output=True)
    return out


def test_go_and_java_corpora_from_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("CODECIRCUITS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="codecircuits corpus fetch go"):
        corpus_mod.load("go:test")
    go_src = "usr/share/go-1.19/src/"
    files = {f"{go_src}pkg{i}/f{i}.go": f"package pkg{i}\n\nfunc F{i}() int {{ return {i} }}\n" for i in range(40)}
    files[go_src + "pkg0/f0_test.go"] = "package pkg0\n"
    files[go_src + "pkg1/testdata/x.go"] = "package x\n"
    deb = _deb(tmp_path, "golang-1.19-src", files)
    path = ds.fetch("go", deb=deb)
    assert ds.fetched("go") and (path / ds.MANIFEST).is_file()
    whole = corpus_mod.debian("go")
    assert len(whole) == 40 and not any(f.path.endswith("_test.go") or "testdata" in f.path for f in whole)
    splits = {s: {f.path for f in corpus_mod.debian("go", s)} for s in corpus_mod.SPLITS}
    assert sum(len(v) for v in splits.values()) == 40 and not splits["train"] & splits["test"]
    assert {f.path for f in corpus_mod.load("go:train")} == splits["train"]
    assert all(corpus_mod.split_of(p) == s for s, ps in splits.items() for p in ps)

    jfiles = {f"java.base/java/util/C{i}.java": f"class C{i} {{ int f() {{ return {i}; }} }}\n" for i in range(5)}
    jfiles["java.base/test/T.java"] = "class T {}\n"
    jdeb = _deb(tmp_path, "openjdk-17-source", jfiles, zip_at="usr/lib/jvm/openjdk-17/lib/src.zip")
    ds.fetch("java", deb=jdeb)
    assert sorted(f.path for f in corpus_mod.load("java")) == sorted(k for k in jfiles if "/test/" not in k)

    # a cached copy is kept; a broken package is refused without touching it
    assert ds.fetch("go") == path
    with pytest.raises(InputError, match="no .*src.zip"):
        ds.fetch("java", deb=deb, force=True)
    assert len(corpus_mod.debian("java")) == 5
    with pytest.raises(InputError, match="choose one of"):
        ds.fetch("rust")


def test_shell_corpus_from_bash_completion(tmp_path, monkeypatch):
    """Shell scripts have no suffix: every regular file is kept as NAME.sh, symlinks (aliases) are left out."""
    monkeypatch.setenv("CODECIRCUITS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match="codecircuits corpus fetch shell"):
        corpus_mod.load("shell:test")
    comp = "usr/share/bash-completion/completions/"
    files = {f"{comp}tool{i}": f"# bash completion for tool{i}\n_tool{i}()\n{{\n    local cur\n}}\n" for i in range(30)}
    files[comp + "helper.py"] = "_helper() { :; }\n"
    deb_root = tmp_path / "bash-completion"
    (deb_root / "DEBIAN").mkdir(parents=True)
    (deb_root / "DEBIAN" / "control").write_text(
        "Package: bash-completion\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n"
    )
    for rel, text in files.items():
        p = deb_root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (deb_root / comp / "alias0").symlink_to("tool0")
    deb = tmp_path / "bash-completion_1.0_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(deb_root), str(deb)], check=True, capture_output=True)
    path = ds.fetch("shell", deb=deb)
    assert ds.fetched("shell") and (path / ds.MANIFEST).is_file()
    whole = corpus_mod.load("shell")
    assert sorted(f.path for f in whole) == sorted([f"tool{i}.sh" for i in range(30)] + ["helper.py.sh"])
    assert next(f for f in whole if f.path == "tool3.sh").text.startswith("# bash completion for tool3")
    splits = {s: {f.path for f in corpus_mod.load(f"shell:{s}")} for s in corpus_mod.SPLITS}
    assert sum(len(v) for v in splits.values()) == 31
    assert all(corpus_mod.split_of(p) == s for s, ps in splits.items() for p in ps)
