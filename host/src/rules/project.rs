//! `smartmart rules test | watch`: a rule project (a folder `rules new`
//! wrote) built with its own build command, loaded as the service would load
//! it, and run on every `examples/NAME.input.json` against
//! `NAME.expected.json`; `watch` does all of it again after every save.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::runner::{self, Expected, RunInput};
use super::scaffold::Lang;
use super::{Budgets, ModuleConfig, RuleRuntime};

/// A rule project: its folder, language and the component its build writes.
#[derive(Debug, Clone)]
pub struct Project {
    pub dir: PathBuf,
    pub lang: Lang,
    pub component: PathBuf,
}

impl Project {
    /// The project in `dir`: JavaScript when it has a `package.json`, Rust
    /// when it has a `Cargo.toml`; the component is named after the package.
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        // Absolute, as the file watcher reports the paths it saw change.
        let dir = &dir.canonicalize().with_context(|| format!("opening the project folder {}", dir.display()))?;
        let read = |name: &str| std::fs::read_to_string(dir.join(name));
        if let Ok(text) = read("package.json") {
            let package: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {}/package.json", dir.display()))?;
            let name = package["name"].as_str().context("package.json has no \"name\"")?;
            let component = dir.join(format!("{}.wasm", name.replace('-', "_")));
            return Ok(Project { dir: dir.to_owned(), lang: Lang::Js, component });
        }
        if let Ok(text) = read("Cargo.toml") {
            let manifest: toml::Value =
                toml::from_str(&text).with_context(|| format!("parsing {}/Cargo.toml", dir.display()))?;
            let name = manifest
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .context("Cargo.toml has no [package] name")?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| dir.join("target"), PathBuf::from);
            let component = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
            return Ok(Project { dir: dir.to_owned(), lang: Lang::Rust, component });
        }
        bail!("{} is not a rule project: it has neither a package.json nor a Cargo.toml", dir.display())
    }

    /// The project's own build command (the README's).
    fn build_command(&self) -> Command {
        let mut cmd = match self.lang {
            Lang::Js => {
                let mut cmd = Command::new("npm");
                cmd.args(["run", "build", "--silent"]);
                cmd
            }
            Lang::Rust => {
                let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
                cmd.args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"]);
                cmd
            }
        };
        cmd.current_dir(&self.dir);
        cmd
    }

    /// The example pairs, by name: `examples/NAME.input.json` and `NAME.expected.json`.
    fn examples(&self) -> anyhow::Result<Vec<(String, PathBuf, PathBuf)>> {
        let folder = self.dir.join("examples");
        let entries = std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?;
        let mut pairs = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let file = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".input.json") {
                pairs.push((name.to_owned(), path.clone(), folder.join(format!("{name}.expected.json"))));
            }
        }
        pairs.sort();
        Ok(pairs)
    }

    /// Whether a change to `path` calls for a new round: not the build's
    /// own output, the installed packages, the module cache or VCS files.
    pub fn is_source(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(&self.dir) else { return false };
        let first = relative.components().find_map(|c| match c {
            std::path::Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        });
        let skipped = matches!(first.as_deref(), Some("node_modules" | "target" | "smartmart-data" | ".git"));
        let output = path.extension().is_some_and(|e| e == "wasm");
        !skipped && !output && path != self.component
    }
}

/// What one round found.
#[derive(Debug)]
pub enum Round {
    /// The build command failed (its output was shown as it ran).
    BuildFailed,
    /// The component does not load as the service would load it.
    LoadFailed,
    /// It loaded and ran on every example; how many did not answer as expected.
    Ran { failed: usize },
}

impl Round {
    pub fn passed(&self) -> bool {
        matches!(self, Round::Ran { failed: 0, .. })
    }
}

/// Builds the project, loads its component and runs every example, printing
/// as it goes (the build's own output included) to stdout.
pub fn round(runtime: &RuleRuntime, project: &Project, budgets: Budgets) -> anyhow::Result<Round> {
    let started = Instant::now();
    let mut build = project.build_command();
    println!("build:    {} in {}", describe(&build), project.dir.display());
    let status = build.status().with_context(|| format!("running {}", describe(&build)))?;
    if !status.success() {
        println!("build:    failed ({status})");
        return Ok(Round::BuildFailed);
    }
    println!("build:    {} in {:.1} s", project.component.display(), started.elapsed().as_secs_f64());
    let check = match runner::check(runtime, &project.component, None) {
        Ok(check) => check,
        Err(e) => {
            println!("check:    {e:#}");
            return Ok(Round::LoadFailed);
        }
    };
    println!(
        "check:    {} {} ({}), {} bytes, {}",
        check.identity.name, check.identity.version, check.world_name, check.size_bytes, check.identity.digest
    );
    let (mut passed, mut failed) = (0, 0);
    for (name, input_path, expected_path) in project.examples()? {
        let verdict = run_example(runtime, project, &input_path, &expected_path, budgets);
        // An example that cannot run (a malformed file) is a failed one, with the reason.
        let differences = verdict.unwrap_or_else(|e| vec![format!("{e:#}")]);
        println!("example:  {name} {}", if differences.is_empty() { "ok" } else { "FAILED" });
        for difference in &differences {
            println!("  {difference}");
        }
        if differences.is_empty() { passed += 1 } else { failed += 1 }
    }
    println!("examples: {passed} passed, {failed} failed");
    Ok(Round::Ran { failed })
}

fn run_example(
    runtime: &RuleRuntime,
    project: &Project,
    input_path: &Path,
    expected_path: &Path,
    budgets: Budgets,
) -> anyhow::Result<Vec<String>> {
    let input: RunInput = read_json(input_path)?;
    let expected: Expected = read_json(expected_path)?;
    let config: ModuleConfig = input.config.clone();
    let module = runner::load(runtime, &project.component, None, config, budgets)?;
    let report = runner::run(&module, &input)?;
    Ok(runner::differences(&report, &expected))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Rounds forever: one now, then one after each save of a source file
/// (changes within `settle` of each other make one round).
pub fn watch(runtime: &RuleRuntime, project: &Project, budgets: Budgets, settle: Duration) -> anyhow::Result<()> {
    use notify::{RecursiveMode, Watcher as _};
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // A save creates, writes, renames or removes; reading (the build's
        // own, the examples') and a bare `touch` change nothing to rebuild.
        if let Ok(event) = event
            && is_a_save(&event.kind)
        {
            let _ = tx.send(event.paths);
        }
    })?;
    watcher
        .watch(&project.dir, RecursiveMode::Recursive)
        .with_context(|| format!("watching {}", project.dir.display()))?;
    loop {
        round(runtime, project, budgets)?;
        println!("watching {} for changes (Ctrl-C to stop)", project.dir.display());
        // Wait for a source change, then let a burst of saves settle.
        loop {
            let paths = rx.recv().context("the file watcher stopped")?;
            if paths.iter().any(|p| project.is_source(p)) {
                break;
            }
        }
        while rx.recv_timeout(settle).is_ok() {}
        println!();
    }
}

fn is_a_save(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(modify) => matches!(modify, ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_project_is_known_by_its_package_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        assert!(Project::open(&dir).unwrap_err().to_string().contains("is not a rule project"));
        std::fs::write(dir.join("package.json"), r#"{"name": "spring-sale"}"#).unwrap();
        let project = Project::open(&dir).unwrap();
        assert_eq!((project.lang, project.component.clone()), (Lang::Js, dir.join("spring_sale.wasm")));
        assert!(project.is_source(&dir.join("rule.js")));
        assert!(project.is_source(&dir.join("./examples/a.input.json")));
        for ignored in
            ["spring_sale.wasm", "node_modules/x/index.js", "./node_modules/.bin", "smartmart-data/x", "a.wasm"]
        {
            assert!(!project.is_source(&dir.join(ignored)), "{ignored}");
        }
        assert!(!project.is_source(Path::new("/elsewhere/rule.js")));
    }
}
