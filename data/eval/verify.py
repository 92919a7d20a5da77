#!/usr/bin/env python3
"""Re-run the execution check of the eval bundle in this folder.

For every problem of code_completion_test.jsonl (HumanEval-X test split, 5 languages) and
text_to_code_test.jsonl (MBPP test split) it builds the program exactly as described in
README.md and runs it, for
  * canonical : the canonical solution              -> must PASS
  * const     : body replaced by "return <constant>" -> must FAIL
  * raise     : body replaced by raise/throw/panic   -> must FAIL
and prints a table. Exit status 0 iff every canonical that is flagged `canonical_passes: true`
passed and every stub failed.

The composition helpers `compose_humaneval_x(item, completion)` and
`compose_mbpp(item, completion)` and `gsm8k_extract / gsm8k_match` are meant to be imported by the
metric code, so that training-time evaluation and this check build identical programs.

Requirements (see README.md): python3 with numpy (HumanEval-X Python prefix imports numpy),
g++ (+ libssl-dev for CPP/162), javac/java (JDK >= 11), node (+ npm package js-md5 on NODE_PATH for
JavaScript/162), go (>= 1.18) plus the testify vendor tree of THUDM/CodeGeeX
(codegeex/benchmark/humaneval-x/go/evaluation/vendor.tar.gz), given with --go-vendor.

Usage:
  python3 verify.py [--python PY] [--go-vendor vendor.tar.gz|vendor/] [--node-path DIR]
                    [--langs python,java,cpp,js,go,mbpp] [--timeout 10] [--jobs N] [--json-out F]
"""
import argparse
import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))

# From THUDM/CodeGeeX codegeex/benchmark/utils.py (IMPORT_HELPER["go"]).
GO_IMPORT_HELPER = ["math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort",
                    "math/rand", "crypto/md5"]

# go.mod of THUDM/CodeGeeX codegeex/benchmark/humaneval-x/go/evaluation/go.mod (verbatim).
GO_MOD = """module humanEval

go 1.18

require (
\tgithub.com/go-openapi/inflect v0.19.0
\tgithub.com/stretchr/testify v1.8.0
)

require (
\tgithub.com/davecgh/go-spew v1.1.1 // indirect
\tgithub.com/pmezard/go-difflib v1.0.0 // indirect
\tgopkg.in/yaml.v3 v3.0.1 // indirect
)
"""


# ----------------------------------------------------------------------------------------------
# Program composition (mirrors process_humaneval_test() of codegeex/benchmark/evaluate_humaneval_x.py)
# ----------------------------------------------------------------------------------------------
def python_truncate(code):
    """HumanEval-X (Python): keep the completion up to the first non-empty line that does not
    start with a space or a tab (i.e. only the indented function body survives)."""
    kept = []
    for line in code.split("\n"):
        if len(line.strip()) > 0 and line[0] != " " and line[0] != "\t":
            break
        kept.append(line)
    return "\n".join(kept)


def go_extra_imports(test_setup, code):
    """HumanEval-X (Go): import block for helper packages used by the completion
    (`<last path element>.` occurs in the completion) and not already in test_setup."""
    pkgs = []
    for pkg in GO_IMPORT_HELPER:
        if pkg not in test_setup:
            p = pkg.split("/")[-1]
            if p + "." in code:
                pkgs.append(f'"{pkg}"')
    if not pkgs:
        return None
    return "import (\n" + "    ".join([p + "\n" for p in pkgs]) + ")"


def compose_humaneval_x(item, completion):
    """Full source file for one HumanEval-X item and a completion (the text generated after
    item['prompt'])."""
    lang, prompt, test, setup = item["lang"], item["prompt"], item["test"], item["test_setup"]
    if lang == "python":
        return setup + prompt + python_truncate(completion) + "\n" + test + "\n"
    if lang == "cpp":
        return setup + prompt + completion + "\n" + test
    if lang in ("java", "js"):
        return prompt + completion + "\n" + test
    if lang == "go":
        prompt = prompt.replace(item["import"], "")
        extra = go_extra_imports(setup, completion)
        if extra:
            return setup + "\n" + extra + "\n" + prompt + completion + "\n" + test
        return setup + "\n" + prompt + completion + "\n" + test
    raise ValueError(lang)


def mbpp_extract(completion):
    """The text_to_code target is the code followed by a closing ``` fence: cut there."""
    return completion.split("```")[0]


def compose_mbpp(item, completion):
    code = mbpp_extract(completion)
    return (code + "\n" + item["test_setup_code"] + "\n" + "\n".join(item["test_list"]) + "\n")


# ----------------------------------------------------------------------------------------------
# GSM8K exact match helpers
# ----------------------------------------------------------------------------------------------
_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_extract(text):
    """Final answer of a generation: the number after the last '####' if there is one, else the
    last number in the text; commas removed. None if no number."""
    if "####" in text:
        text = text.rsplit("####", 1)[1]
        m = _NUM.search(text)
    else:
        ms = _NUM.findall(text)
        m = None
        if ms:
            return _norm(ms[-1])
    return _norm(m.group(0)) if m else None


def _norm(s):
    s = s.replace(",", "").rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def gsm8k_match(generation, answer):
    return gsm8k_extract(generation) == answer


# ----------------------------------------------------------------------------------------------
# Wrong-solution stubs
# ----------------------------------------------------------------------------------------------
def _go_result_types(decl):
    m = re.match(r"\s*func\s+\w+\s*\((.*?)\)\s*(.*?)\s*\{\s*$", decl)
    ret = m.group(2).strip()
    if ret.startswith("("):
        return [x.strip() for x in ret[1:-1].split(",")]
    return [ret] if ret else []


def stub_humaneval_x(item, kind):
    lang = item["lang"]
    decl = [l for l in item["prompt"].split("\n") if l.strip()][-1]
    if lang == "python":
        return "    return None\n" if kind == "const" else "    raise NotImplementedError\n"
    if lang == "js":
        return ("  return null\n}\n" if kind == "const" else "  throw new Error('stub')\n}\n")
    if lang == "cpp":
        return ("    return {};\n}\n" if kind == "const" else "    throw 1;\n}\n")
    if lang == "java":
        rtype = re.search(r"public\s+(.+?)\s+\w+\s*\(", decl).group(1)
        val = {"int": "0", "long": "0", "double": "0", "float": "0", "short": "0", "byte": "0",
               "char": "'\\0'", "boolean": "false"}.get(rtype, "null")
        body = f"        return {val};\n" if kind == "const" else \
            "        throw new UnsupportedOperationException();\n"
        return body + "    }\n}\n"
    if lang == "go":
        if kind == "const":
            types = _go_result_types(decl)
            lines = [f"    var zero{i} {t}\n" for i, t in enumerate(types)]
            ret = ", ".join(f"zero{i}" for i in range(len(types)))
            return "".join(lines) + f"    return {ret}\n}}\n"
        return '    panic("stub")\n}\n'
    raise ValueError(lang)


class _Stubber(ast.NodeTransformer):
    def __init__(self, kind):
        self.kind = kind

    def visit_FunctionDef(self, node):
        if self.kind == "const":
            node.body = [ast.Return(value=ast.Constant(value=None))]
        else:
            node.body = [ast.Raise(exc=ast.Name(id="NotImplementedError", ctx=ast.Load()), cause=None)]
        return node


def stub_mbpp(item, kind):
    tree = ast.parse(item["canonical_solution"])
    tree = ast.fix_missing_locations(_Stubber(kind).visit(tree))
    return ast.unparse(tree) + "\n```\n"


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------
class Runner:
    def __init__(self, args):
        self.a = args
        self.env = dict(os.environ)
        if args.node_path:
            self.env["NODE_PATH"] = os.path.abspath(args.node_path)
        self.tmp_root = tempfile.mkdtemp(prefix="evalverify_")
        self.go_root = None
        if "go" in args.langs:
            self._setup_go()

    def _setup_go(self):
        v = self.a.go_vendor
        if not v or not shutil.which("go"):
            print("!! Go skipped: need `go` on PATH and --go-vendor (CodeGeeX vendor.tar.gz)", file=sys.stderr)
            self.a.langs = [l for l in self.a.langs if l != "go"]
            return
        root = os.path.join(self.tmp_root, "go")
        os.makedirs(root)
        with open(os.path.join(root, "go.mod"), "w") as f:
            f.write(GO_MOD)
        if os.path.isdir(v):
            shutil.copytree(v, os.path.join(root, "vendor"))
        else:
            with tarfile.open(v) as tf:
                tf.extractall(root)
        self.go_root = root
        self.env.update({"GOFLAGS": "-mod=vendor", "GOPROXY": "off", "GO111MODULE": "on",
                         "GOCACHE": os.path.join(self.tmp_root, "gocache"),
                         "GOPATH": os.path.join(self.tmp_root, "gopath")})

    def close(self):
        shutil.rmtree(self.tmp_root, ignore_errors=True)

    def _run(self, cmd, cwd, timeout):
        # own process group, so that a timeout also ends grandchildren (e.g. the go test binary)
        p = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
            return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), False
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.communicate()
            return None, "", "", True

    def run_program(self, lang, src, task_id=""):
        """-> (passed: bool, reason: str)"""
        T, CT = self.a.timeout, self.a.compile_timeout
        if lang == "go":
            d = tempfile.mkdtemp(dir=self.go_root, prefix="t")
        else:
            d = tempfile.mkdtemp(dir=self.tmp_root, prefix=lang)
        try:
            if lang in ("python", "mbpp"):
                open(os.path.join(d, "prog.py"), "w").write(src)
                rc, out, err, to = self._run([self.a.python, "prog.py"], d, T)
                if to:
                    return False, "timeout"
                return (rc == 0), ("ok" if rc == 0 else "run: " + _last(err))
            if lang == "js":
                open(os.path.join(d, "test.js"), "w").write(src)
                rc, out, err, to = self._run(["node", "test.js"], d, T)
                if to:
                    return False, "timeout"
                # CodeGeeX rule: any output on stderr (console.assert failures) or stdout = failure
                ok = rc == 0 and not err and not out
                return ok, ("ok" if ok else "run: " + _first_error(err or out or f"rc={rc}"))
            if lang == "cpp":
                open(os.path.join(d, "test.cpp"), "w").write(src)
                cmd = ["g++", "-std=c++11", "test.cpp"]
                if "162" in task_id:
                    cmd += ["-lcrypto", "-lssl"]
                rc, out, err, to = self._run(cmd, d, CT)
                if to or rc != 0:
                    return False, "compile: " + ("timeout" if to else _first_error(err))
                rc, out, err, to = self._run(["./a.out"], d, T)
                if to:
                    return False, "timeout"
                return (rc == 0), ("ok" if rc == 0 else "run: " + _last(err or f"rc={rc}"))
            if lang == "java":
                open(os.path.join(d, "Main.java"), "w").write(src)
                rc, out, err, to = self._run(["javac", "Main.java"], d, CT)
                if to or rc != 0:
                    return False, "compile: " + ("timeout" if to else _first_error(err))
                rc, out, err, to = self._run(["java", "-cp", d, "Main"], d, T)
                if to:
                    return False, "timeout"
                return (rc == 0), ("ok" if rc == 0 else "run: " + _first_error(err or f"rc={rc}"))
            if lang == "go":
                open(os.path.join(d, "main_test.go"), "w").write(src)
                # `go test` compiles (incl. its vet subset) and runs; the test binary gets -timeout=T,
                # the whole command CT + T.
                rc, out, err, to = self._run(["go", "test", f"-timeout={T}s", "main_test.go"], d, CT + T)
                if to:
                    return False, "timeout"
                if rc == 0:
                    return True, "ok"
                txt = err or out
                kind = "compile" if ("build failed" in txt or "[setup failed]" in txt or
                                     re.search(r"\.go:\d+:\d+: ", txt) and "--- FAIL" not in out) else "run"
                return False, kind + ": " + _first_error(txt)
            raise ValueError(lang)
        finally:
            shutil.rmtree(d, ignore_errors=True)


def _last(s):
    s = [l for l in s.strip().split("\n") if l.strip()]
    return s[-1][:200] if s else ""


def _first_error(s):
    for l in s.split("\n"):
        if ("error" in l.lower() or re.search(r"\.go:\d+:\d+", l) or "Exception" in l
                or "Assertion failed" in l):
            return l.strip()[:200]
    return _last(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--go-vendor", default=os.environ.get("HUMANEVALX_GO_VENDOR"))
    ap.add_argument("--node-path", default=os.environ.get("NODE_PATH"))
    ap.add_argument("--langs", default="python,java,cpp,js,go,mbpp")
    ap.add_argument("--timeout", type=float, default=10.0, help="run limit per program (s)")
    ap.add_argument("--compile-timeout", type=float, default=60.0, help="compile limit (s)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--no-stubs", action="store_true")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    a.langs = a.langs.split(",")
    if os.sep in a.python:
        a.python = os.path.abspath(a.python)

    # Shipped gzipped in coba-dist's data/eval/ (the bundle's files with `gzip -9 -n`).
    def rows(name):
        import gzip
        with gzip.open(os.path.join(HERE, name + ".jsonl.gz"), "rt", encoding="utf-8") as f:
            return [json.loads(l) for l in f]
    cc = rows("code_completion_test")
    mb = rows("text_to_code_test")
    if "python" in a.langs:
        chk = subprocess.run([a.python, "-c", "import numpy"], capture_output=True)
        if chk.returncode != 0:
            print(f"!! {a.python} has no numpy: the HumanEval-X Python prefix imports numpy, so every "
                  "Python program will fail. Pass --python with a numpy-enabled interpreter.", file=sys.stderr)
    runner = Runner(a)
    kinds = ["canonical"] + ([] if a.no_stubs else ["const", "raise"])
    jobs = []
    for it in cc:
        if it["lang"] not in a.langs:
            continue
        for k in kinds:
            comp = it["canonical_solution"] if k == "canonical" else stub_humaneval_x(it, k)
            jobs.append((it, it["lang"], k, compose_humaneval_x(it, comp)))
    if "mbpp" in a.langs:
        for it in mb:
            for k in kinds:
                comp = it["canonical_solution"] + "\n```\n" if k == "canonical" else stub_mbpp(it, k)
                jobs.append((it, "mbpp", k, compose_mbpp(it, comp)))

    if "go" in a.langs and jobs:  # warm the Go build cache (testify) once, outside the timing
        g = [j for j in jobs if j[1] == "go"]
        if g:
            saved, a.timeout = a.timeout, 120
            runner.run_program("go", g[0][3], g[0][0]["id"])
            a.timeout = saved

    def work(j):
        it, lang, k, src = j
        ok, why = runner.run_program(lang, src, it["id"])
        return {"id": it["id"], "lang": lang, "kind": k, "passed": ok, "reason": why,
                "flag": it.get("canonical_passes", True)}

    try:
        with ThreadPoolExecutor(a.jobs) as ex:
            results = list(ex.map(work, jobs))
        # a canonical that timed out under parallel load is re-run once, alone
        for i, r in enumerate(results):
            if r["kind"] == "canonical" and r["reason"] == "timeout":
                r2 = work(jobs[i])
                r2["reason"] += " (re-run alone after a timeout under load)"
                results[i] = r2
    finally:
        runner.close()

    bad = 0
    langs = [l for l in ["python", "java", "cpp", "js", "go", "mbpp"] if any(r["lang"] == l for r in results)]
    print(f"{'lang':8} {'n':>4} {'canonical pass':>15} {'const-stub fail':>16} {'raise-stub fail':>16}")
    for l in langs:
        rs = [r for r in results if r["lang"] == l]
        n = len([r for r in rs if r["kind"] == "canonical"])
        cp = sum(r["passed"] for r in rs if r["kind"] == "canonical")
        cf = sum(not r["passed"] for r in rs if r["kind"] == "const")
        rf = sum(not r["passed"] for r in rs if r["kind"] == "raise")
        if a.no_stubs:
            print(f"{l:8} {n:>4} {cp:>10}/{n:<4} {'-':>16} {'-':>16}")
        else:
            print(f"{l:8} {n:>4} {cp:>10}/{n:<4} {cf:>11}/{n:<4} {rf:>11}/{n:<4}")
    for r in results:
        if r["kind"] == "canonical" and not r["passed"]:
            tag = "(flagged canonical_passes=false)" if r["flag"] is False else "UNEXPECTED"
            bad += r["flag"] is not False
            print(f"  canonical FAIL {r['id']}: {r['reason']} {tag}")
        if r["kind"] == "canonical" and r["passed"] and r["flag"] is False:
            print(f"  canonical PASS {r['id']} although flagged canonical_passes=false (environment has the extra dependency)")
        if r["kind"] != "canonical" and r["passed"]:
            bad += 1
            print(f"  {r['kind']}-stub PASSED (should fail) {r['id']}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=1)
    print("OK" if bad == 0 else f"{bad} unexpected results")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
