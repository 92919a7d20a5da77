//! Which languages can be run here: each toolchain is probed inside the sandbox (as the
//! programs will run), and a missing one is reported as a skip with its reason, never a
//! silent 0.

use crate::problems::Lang;
use crate::sandbox::{Limits, Sandbox};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the optional pieces are.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolchainOptions {
    /// The Python interpreter (looked up on the sandbox PATH); default `python3`.
    pub python: Option<String>,
    /// A `node_modules` directory for JavaScript (HumanEval-X JavaScript/162 needs `js-md5`),
    /// given to node as `NODE_PATH`.
    pub node_path: Option<PathBuf>,
    /// The Go module root holding CodeGeeX's `go.mod` and `vendor/` (testify); Go is skipped
    /// without it.
    pub go_module: Option<PathBuf>,
}

/// The languages available, and why the others are not.
#[derive(Debug, Clone, PartialEq)]
pub struct Toolchains {
    /// The Python command.
    pub python: String,
    /// Whether that Python can `import numpy` (HumanEval-X Python's prefix imports it).
    pub python_numpy: bool,
    /// Per language: `Ok(())` or the skip reason (`no g++`, ...).
    pub status: BTreeMap<Lang, Result<(), String>>,
    /// Options as given.
    pub options: ToolchainOptions,
}

/// JVM flags that keep javac and java small and quick to start under the sandbox limits
/// (address space, processes).
pub const JVM_FLAGS: [&str; 6] = [
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:ReservedCodeCacheSize=64m",
    "-XX:CompressedClassSpaceSize=64m",
    "-XX:ActiveProcessorCount=1",
];

impl Toolchains {
    /// Probes python3 (and numpy), g++, javac + java, node, go (+ the module root) in `sandbox`.
    pub fn detect(sandbox: &Sandbox, options: ToolchainOptions) -> Self {
        let python = options.python.clone().unwrap_or_else(|| "python3".into());
        let ok = |argv: &[&str]| -> bool {
            let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
            sandbox
                .workdir("probe")
                .and_then(|dir| sandbox.run(&dir, &argv, &[], &Limits::run(30)))
                .is_ok_and(|out| out.success())
        };
        let need = |found: bool, why: &str| if found { Ok(()) } else { Err(why.to_string()) };
        let python_ok = ok(&[&python, "-c", "pass"]);
        let python_numpy = python_ok && ok(&[&python, "-c", "import numpy"]);
        let mut status = BTreeMap::new();
        status.insert(
            Lang::Python,
            need(python_ok, &format!("no {python} in the sandbox PATH")),
        );
        status.insert(Lang::Cpp, need(ok(&["g++", "--version"]), "no g++"));
        let javac = ok(&["javac", "-J-Xmx256m", "-version"]);
        let java = ok(&["java", "-Xmx256m", "-version"]);
        status.insert(
            Lang::Java,
            need(javac && java, if javac { "no java" } else { "no javac" }),
        );
        status.insert(Lang::Js, need(ok(&["node", "--version"]), "no node"));
        let go = match (ok(&["go", "version"]), &options.go_module) {
            (false, _) => Err("no go".to_string()),
            (true, None) => Err(
                "go needs the testify vendor tree: --go-module DIR (CodeGeeX's go.mod + vendor/)"
                    .to_string(),
            ),
            (true, Some(dir)) if !dir.join("vendor").is_dir() => Err(format!(
                "--go-module {}: no vendor/ directory",
                dir.display()
            )),
            (true, Some(_)) => Ok(()),
        };
        status.insert(Lang::Go, go);
        Self {
            python,
            python_numpy,
            status,
            options,
        }
    }

    /// `Ok(())` when programs in `lang` can run, else the skip reason. HumanEval-X Python
    /// (`needs_numpy`) also needs numpy.
    pub fn available(&self, lang: Lang, needs_numpy: bool) -> Result<(), String> {
        self.status
            .get(&lang)
            .cloned()
            .unwrap_or_else(|| Err(format!("no {}", lang.as_str())))?;
        if lang == Lang::Python && needs_numpy && !self.python_numpy {
            return Err(format!(
                "{} cannot import numpy (HumanEval-X's Python prefix imports it; e.g. apt install \
                 python3-numpy)",
                self.python
            ));
        }
        Ok(())
    }

    /// One line per language for logs: `python: ok`, `go: skipped: no go`.
    pub fn summary(&self) -> Vec<String> {
        self.status
            .iter()
            .map(|(lang, s)| match s {
                Ok(()) if *lang == Lang::Python && !self.python_numpy => format!(
                    "python: ok ({}; no numpy: HumanEval-X python skipped)",
                    self.python
                ),
                Ok(()) => format!("{}: ok", lang.as_str()),
                Err(why) => format!("{}: skipped: {why}", lang.as_str()),
            })
            .collect()
    }
}
