//! `cargo xtask`: the repository's build steps that cargo alone cannot express.
//!
//! The rules are WebAssembly components built from three wasm workspaces of
//! their own (`plugins/`, `tests/guests/`, `examples/rules/clearance/`), and
//! the host's tests, demo and benchmarks load those components from disk. Two
//! things therefore have to happen before `cargo test` at the root means
//! anything, and this tool does them:
//!
//! - a fresh machine lacks the `wasm32-wasip2` and `wasm32-unknown-unknown`
//!   targets: install them (rustup);
//! - the guests must be built before the host's tests run: the test guests
//!   and the example for `wasm32-wasip2` (the target that makes a component
//!   directly, as rule authors use it), the bundled rules for
//!   `wasm32-unknown-unknown` as core modules that this tool turns into
//!   components itself (`wit-component`): without Rust std's WASI imports a
//!   component imports only its world's `log` and `config`, so that the host
//!   wires up a handful of functions per fresh instance instead of ~70 (see
//!   BENCHMARKS.md, "Rule runtime");
//! - the JavaScript example rule (`examples/rules/coupons-js/`) needs its
//!   pinned toolchain from npm (`npm ci`, from its committed lock file):
//!   Node.js 20+ and npm must be on PATH. Only `guests` and `test` install
//!   it; its component is built by its own `npm run build`, which needs the
//!   host binary, so by the integration tests and, after `cargo test`, by
//!   its `npm test`. The service, the demo and the benchmarks never load it,
//!   so `serve`, `demo`, `run` and `bench` need no Node.js.
//!
//! ```text
//! cargo xtask guests          build every Rust guest, install the JavaScript example's toolchain;
//!                             copy them to target/wasm/<name>.wasm and the
//!                             bundled rules also to plugins/bundled/
//! cargo xtask test [ARGS]     the local services (.ci/services.sh: PostgreSQL,
//!                             NATS with JetStream, started when they do not
//!                             answer; the Kafka test broker, built once, but
//!                             not for a filtered run, see below), every guest,
//!                             the Python tools' venv (.ci/python.sh), the rules'
//!                             native unit tests (plugins/, the Rust example), then
//!                             cargo test --workspace ARGS with the venv's bin/
//!                             first on PATH, then the JavaScript example's
//!                             npm test; without ARGS, then .ci/schemathesis.sh
//! cargo xtask demo [ARGS]     the Rust guests, then cargo run -p smartmart -- demo ARGS
//! cargo xtask serve [ARGS]    the Rust guests, then cargo run --release -p smartmart -- serve ARGS
//! cargo xtask run [ARGS]      the Rust guests, then cargo run -p smartmart -- ARGS
//! cargo xtask bench [ARGS]    the Rust guests, then cargo bench -p smartmart ARGS
//! ```
//!
//! The Kafka test broker (`.ci/kafka.sh`, tansu built from crates.io: 20–33
//! minutes once) is built for the whole suite, and for a filtered run only
//! under `CI=true` or when an argument mentions `kafka`; otherwise
//! `.ci/services.sh` gets `SMARTMART_KAFKA_BROKER=skip` (set it to `build`
//! to override), and the Kafka tests, if the filter selects them, fail
//! saying that the broker is missing.
//!
//! Each command announces its stages on stderr (`xtask: [2/3] …`), and every
//! command run is printed first. Besides std, only `wit-component` (pure
//! Rust, the crate wasmtime's own bindings generator uses): this must build
//! anywhere.

use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::{env, fs, io};

/// The target of the guests that are components as built (WASI preview 2).
const WASM_TARGET: &str = "wasm32-wasip2";
/// The target of the bundled rules: core modules without WASI imports.
const BARE_TARGET: &str = "wasm32-unknown-unknown";
/// The wasm workspaces built for [`WASM_TARGET`], relative to the repository root.
const GUEST_WORKSPACES: [&str; 2] = ["tests/guests/Cargo.toml", "examples/rules/clearance/Cargo.toml"];
/// The bundled rules' workspace, built for [`BARE_TARGET`].
const BUNDLED_WORKSPACE: &str = "plugins/Cargo.toml";
/// Where the guests build (shared by the three workspaces), from the root.
const GUEST_TARGET_DIR: &str = "target/guests";
/// The JavaScript example rule, relative to the root.
const JS_EXAMPLE: &str = "examples/rules/coupons-js";
/// The host binary `cargo test` builds, which the JavaScript example's
/// `npm test` runs its examples through.
const HOST_BINARY: &str = "target/debug/smartmart";
/// The rules `serve` loads by default; also copied to `plugins/bundled/`.
const BUNDLED: [&str; 4] = ["gold_loyalty.wasm", "coupons.wasm", "nearest_warehouse.wasm", "high_value.wasm"];

type Result<T = (), E = String> = std::result::Result<T, E>;

fn main() -> ExitCode {
    let mut args = env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    match task_main(&task, &rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Which guests a command needs: the serving commands only the Rust ones
/// (no Node.js), `guests` and `test` the JavaScript example too.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guests {
    Rust,
    WithJavaScript,
}

fn task_main(task: &str, rest: &[String]) -> Result {
    match task {
        "guests" if rest.is_empty() => guests(Guests::WithJavaScript, &mut Stages::new(3)),
        "guests" => Err(format!("`guests` takes no arguments, got {rest:?}")),
        "test" => {
            let mut stages = Stages::new(6);
            services(rest, &mut stages)?;
            guests(Guests::WithJavaScript, &mut stages)?;
            let venv = python_venv(&mut stages)?;
            test(rest, venv.as_deref(), &mut stages)
        }
        "demo" | "serve" | "run" => {
            let mut stages = Stages::new(3);
            guests(Guests::Rust, &mut stages)?;
            let subcommand = if task == "run" { None } else { Some(task) };
            smartmart_run(subcommand, rest, &mut stages)
        }
        "bench" => {
            let mut stages = Stages::new(3);
            guests(Guests::Rust, &mut stages)?;
            // The bench profile's first build compiles wasmtime again, whatever
            // else was built before (BENCHMARKS.md: ~25 minutes on 2 cores).
            stages.start(
                "building and running the benchmarks (a first build compiles wasmtime: ~25 minutes on 2 cores)…",
            );
            run(cargo().args(["bench", "-p", "smartmart"]).args(rest))
        }
        _ => Err(format!(
            "unknown task {task:?}\n\
             usage: cargo xtask <guests | test | demo | serve | run | bench> [ARGS...]\n\
             (see the doc comment of xtask/src/main.rs)"
        )),
    }
}

/// The stages of a command, announced one line each on stderr before each
/// starts (`xtask: [2/3] building the rule modules…`), so that a first run
/// on a fresh machine, minutes long, says where it is.
struct Stages {
    total: u32,
    current: u32,
}

impl Stages {
    fn new(total: u32) -> Stages {
        Stages { total, current: 0 }
    }

    fn start(&mut self, what: impl Display) {
        self.current += 1;
        eprintln!("xtask: [{}/{}] {what}", self.current, self.total);
    }
}

/// The repository root (xtask's crate lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the repository").to_path_buf()
}

/// The cargo that runs us (same toolchain), run from the repository root.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    // Without what `cargo run` set for this program: ring's build script
    // tracks CARGO_MANIFEST_DIR, so a build started from here with it set
    // differed from a plain `cargo build` or `cargo test` in the same
    // target directory, and each rebuilt ring and everything above it
    // (rustls, reqwest, async-nats, the host) after the other.
    for (name, _) in env::vars_os() {
        if set_by_cargo_run(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// The variables `cargo run` sets for the program it runs, about that
/// program's own package (`CARGO` itself, the path to cargo, is kept).
fn set_by_cargo_run(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MANIFEST_DIR" | "CARGO_MANIFEST_PATH" | "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
    ) || name.starts_with("CARGO_PKG_")
}

/// Prints `cmd`, runs it, and fails unless it exits successfully.
fn run(cmd: &mut Command) -> Result {
    let program = Path::new(cmd.get_program());
    // Print `cargo`, not the toolchain's full path to it.
    let name = program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned();
    let shown = std::iter::once(name.clone())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    // The variables set for this command (not PATH: long, and said apart).
    let envs: String = cmd
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| Some(format!("{}={} ", key.to_string_lossy(), value?.to_string_lossy())))
        .collect();
    eprintln!("$ {envs}{shown}");
    let status = cmd.status().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("`{name}` not found on PATH"),
        _ => format!("could not start `{shown}`: {e}"),
    })?;
    if status.success() { Ok(()) } else { Err(format!("`{shown}` failed ({status})")) }
}

/// Whether the toolchain has a target's standard library.
fn target_installed(target: &str) -> Result<bool> {
    // Ask the compiler itself where the target's libraries live: this works
    // with and without rustup, for whichever toolchain cargo is using.
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output()
        .map_err(|e| format!("could not run rustc: {e}"))?;
    let libdir = String::from_utf8_lossy(&libdir.stdout);
    Ok(!libdir.trim().is_empty() && Path::new(libdir.trim()).is_dir())
}

/// Installs the wasm targets the guests need with rustup when the
/// toolchain lacks them (one stage).
fn wasm_targets(stages: &mut Stages) -> Result {
    let mut missing = Vec::new();
    for target in [WASM_TARGET, BARE_TARGET] {
        if !target_installed(target)? {
            missing.push(target);
        }
    }
    if missing.is_empty() {
        stages.start(format_args!("the wasm32 targets are installed ({WASM_TARGET}, {BARE_TARGET})"));
        return Ok(());
    }
    stages.start(format_args!("installing the wasm32 targets ({}) with rustup…", missing.join(", ")));
    for target in missing {
        run(Command::new("rustup").args(["target", "add", target])).map_err(|e| {
            format!(
                "{e}\nthe guests need the {target} Rust target. With rustup \
                 (https://rustup.rs): `rustup target add {target}`; otherwise install \
                 your toolchain's rust-std component for {target}."
            )
        })?;
    }
    Ok(())
}

/// Stack of the bundled rules' instances. wasm-ld's default is 1 MiB, and
/// the whole first memory (stack, data, the heap's start) is what the
/// instance pool resets after each call: 64 KiB is far more than these
/// rules use (their data is on the heap) and keeps the memory at 2 pages.
const BARE_RUSTFLAGS: &str = "-C link-arg=-zstack-size=65536";

/// `cargo build --release` of a guest workspace for `target`.
fn build_guests(manifest: &str, target: &str) -> Result {
    let mut cargo = cargo();
    if target == BARE_TARGET {
        cargo.env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS", BARE_RUSTFLAGS);
    }
    // Relative paths: commands run from the root and print as typed there.
    run(cargo.args([
        "build",
        "--release",
        "--target",
        target,
        "--manifest-path",
        manifest,
        "--target-dir",
        GUEST_TARGET_DIR,
    ]))
}

/// The top-level `.wasm` files of a release folder, sorted (`deps/` holds
/// intermediate copies).
fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension() == Some(OsStr::new("wasm")))
        .collect();
    files.sort();
    Ok(files)
}

/// Turns a core module built with wit-bindgen into a component: the world
/// it was built for travels in the module's `component-type` custom section
/// (wit-bindgen puts it there), so the component's imports are exactly the
/// world's imports the module uses.
fn componentize(module: &Path, to: &Path) -> Result {
    let bytes = fs::read(module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&bytes)
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| format!("cannot make a component of {}: {e:#}", module.display()))?;
    fs::write(to, &component).map_err(|e| format!("cannot write {}: {e}", to.display()))?;
    eprintln!(
        "  {} ({} kB, from a {} kB core module)",
        to.display(),
        component.len().div_ceil(1000),
        bytes.len().div_ceil(1000)
    );
    Ok(())
}

/// Builds the guests `which` names and copies the components where the
/// host looks: the wasm targets, the Rust guests (test guests, the
/// clearance example, the bundled rules) and, with
/// [`Guests::WithJavaScript`], the JavaScript example; a stage each.
fn guests(which: Guests, stages: &mut Stages) -> Result {
    wasm_targets(stages)?;
    let root = root();
    let first = !root.join(GUEST_TARGET_DIR).join(BARE_TARGET).join("release").is_dir();
    stages.start(format_args!("building the rule modules{}…", if first { " (first time: a few minutes)" } else { "" }));
    for manifest in GUEST_WORKSPACES {
        build_guests(manifest, WASM_TARGET)?;
    }
    build_guests(BUNDLED_WORKSPACE, BARE_TARGET)?;
    let wasm_dir = root.join("target/wasm");
    let bundled_dir = root.join("plugins/bundled");
    for dir in [&wasm_dir, &bundled_dir] {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }

    // Every top-level .wasm of the wasip2 release folder is a component one
    // of its workspaces produced; bundled rules left there by builds of
    // before they moved to the bare target are not.
    let components = wasm_files(&root.join(GUEST_TARGET_DIR).join(WASM_TARGET).join("release"))?;
    let components: Vec<&PathBuf> =
        components.iter().filter(|path| !BUNDLED.iter().any(|name| path.ends_with(name))).collect();
    for from in &components {
        copy(from, &wasm_dir.join(from.file_name().expect("a file")))?;
    }
    let bare = root.join(GUEST_TARGET_DIR).join(BARE_TARGET).join("release");
    for name in BUNDLED {
        let component = wasm_dir.join(name);
        componentize(&bare.join(name), &component)?;
        copy(&component, &bundled_dir.join(name))?;
    }
    if which == Guests::WithJavaScript {
        stages.start("installing the JavaScript example's toolchain (examples/rules/coupons-js: npm, Node.js 20+)…");
        js_example(&root)?;
    }
    eprintln!(
        "xtask: {} components in {}, {} bundled rules in {}",
        components.len() + BUNDLED.len(),
        wasm_dir.display(),
        BUNDLED.len(),
        bundled_dir.display()
    );
    Ok(())
}

/// `npm` for a command run in `dir`, with a clear error when it is missing.
fn npm(dir: &Path) -> Command {
    let mut cmd = Command::new("npm");
    cmd.current_dir(dir);
    cmd
}

const NODE_NEEDED: &str = "the JavaScript example rule (examples/rules/coupons-js) needs Node.js 20 or \
     later and npm on PATH (Debian: `apt-get install nodejs npm`), and the npm registry for its \
     first `npm ci`";

/// Installs the JavaScript example's pinned toolchain (componentize-qjs,
/// TypeScript) when its `node_modules` is missing or older than the lock
/// file. Its component is built by its own `npm run build`, which needs the
/// host binary (`smartmart rules js-engine`): by the integration tests and
/// `npm test`, after `cargo test` built it.
fn js_example(root: &Path) -> Result {
    let dir = root.join(JS_EXAMPLE);
    let in_dir = |name: &str| dir.join(name);
    if newer_than(&[in_dir("package-lock.json")], &in_dir("node_modules/.package-lock.json")) {
        run(npm(&dir).args(["ci", "--no-audit", "--no-fund"])).map_err(|e| format!("{e}\n{NODE_NEEDED}"))?;
    }
    Ok(())
}

/// Whether `target` is missing or older than any of `sources`.
fn newer_than(sources: &[PathBuf], target: &Path) -> bool {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(built) = modified(target) else {
        return true;
    };
    sources.iter().any(|source| modified(source).is_none_or(|time| time > built))
}

fn copy(from: &Path, to: &Path) -> Result {
    let bytes = fs::copy(from, to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    eprintln!("  {} ({} kB)", to.display(), bytes.div_ceil(1000));
    Ok(())
}

/// Whether `CI=true`: set-up that cannot be done fails the run instead of
/// warning.
fn under_ci() -> bool {
    env::var_os("CI").is_some_and(|value| value == "true")
}

/// Whether a `cargo xtask test ARGS` run leaves the Kafka test broker
/// unbuilt: a filtered run (ARGS) outside CI whose arguments do not mention
/// Kafka, unless SMARTMART_KAFKA_BROKER already says what to do.
fn skip_kafka_broker(args: &[String]) -> bool {
    // A filter that selects Kafka tests needs the broker; `--skip kafka…` does not.
    let selects_kafka = args
        .iter()
        .enumerate()
        .any(|(i, arg)| arg.to_ascii_lowercase().contains("kafka") && (i == 0 || args[i - 1] != "--skip"));
    !args.is_empty() && !under_ci() && env::var_os("SMARTMART_KAFKA_BROKER").is_none() && !selects_kafka
}

/// Checks that the services the tests talk to answer, starting them when
/// they do not (`.ci/services.sh`; under CI=true one that cannot be started
/// fails the run, elsewhere it is a warning and the tests that need it fail).
/// A filtered run does not build the Kafka test broker ([`skip_kafka_broker`]).
fn services(args: &[String], stages: &mut Stages) -> Result {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join(".ci/services.sh"));
    let kafka = if skip_kafka_broker(args) {
        cmd.env("SMARTMART_KAFKA_BROKER", "skip");
        "not built for a filtered run"
    } else {
        "built once: 20–33 minutes the first time"
    };
    stages.start(format_args!("the local services: PostgreSQL, NATS, Chromium, the Kafka test broker ({kafka})…"));
    run(&mut cmd)
}

/// The venv of the suite's Python tools at pinned versions
/// (`.ci/python.sh`: Schemathesis, openapi-spec-validator), so that nothing
/// is pip-installed into the system's Python. Its path, or None (a warning)
/// when it cannot be made outside CI.
fn python_venv(stages: &mut Stages) -> Result<Option<PathBuf>> {
    stages.start("the Python tools' venv (.ci/python.sh; first time: pip, under a minute)…");
    let script = root().join(".ci/python.sh");
    eprintln!("$ bash {}", script.display());
    let made = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("could not start bash: {e}"))
        .and_then(|output| {
            let stdout = String::from_utf8_lossy(&output.stdout);
            match stdout.lines().last() {
                Some(path) if output.status.success() && !path.trim().is_empty() => Ok(PathBuf::from(path.trim())),
                _ => Err(format!("`bash {}` failed ({})", script.display(), output.status)),
            }
        });
    match made {
        Ok(venv) => Ok(Some(venv)),
        Err(e) if under_ci() => Err(e),
        Err(e) => {
            eprintln!("xtask: warning: {e}; the tests that run python3 use the system's");
            Ok(None)
        }
    }
}

/// PATH with `venv`'s bin/ first.
fn path_with_venv(venv: &Path) -> Result<OsString> {
    path_with(&venv.join("bin"))
}

/// PATH with `dir` first.
fn path_with(dir: &Path) -> Result<OsString> {
    let old = env::var_os("PATH").unwrap_or_default();
    env::join_paths(std::iter::once(dir.to_owned()).chain(env::split_paths(&old)))
        .map_err(|e| format!("cannot put {} on PATH: {e}", dir.display()))
}

/// The rules' logic natively (bundled rules and the Rust example), then
/// the host's whole workspace with `args` (python3 from the venv), then the
/// JavaScript example's `npm test` (its examples through the component,
/// with the binary just built), then, without `args`, Schemathesis.
fn test(args: &[String], venv: Option<&Path>, stages: &mut Stages) -> Result {
    let first = !root().join(HOST_BINARY).is_file();
    stages.start(format_args!(
        "building and running the tests{}…",
        if first { " (first build compiles wasmtime: 10–20 minutes on 2 cores)" } else { "" }
    ));
    let mut totals = Totals::default();
    for manifest in ["plugins/Cargo.toml", "examples/rules/clearance/Cargo.toml"] {
        run_tests(
            cargo().args(["test", "--manifest-path", manifest, "--target-dir", "target/guests-native"]),
            &mut totals,
        )?;
    }
    let mut cargo_test = cargo();
    cargo_test.args(["test", "--workspace"]).args(args);
    if let Some(venv) = venv {
        eprintln!("xtask: python3 for the tests: {}/bin first on PATH", venv.display());
        cargo_test.env("PATH", path_with_venv(venv)?);
    }
    let mut outcome = run_tests(&mut cargo_test, &mut totals);
    // The JavaScript example's `npm test` builds its component with the host
    // binary `cargo test` has just built (`rules js-engine`) and runs its
    // examples through it.
    if root().join(HOST_BINARY).is_file() {
        let mut npm_test = npm(&root().join(JS_EXAMPLE));
        npm_test.arg("test").env("PATH", path_with(&root().join(HOST_BINARY).with_file_name(""))?);
        let js = run_tests(&mut npm_test, &mut totals).map_err(|e| format!("{e}\n{NODE_NEEDED}"));
        outcome = outcome.and(js);
    }
    // The whole suite (no filter): the API against its OpenAPI document, with
    // the binary `cargo test` just built; it counts as one test.
    if outcome.is_ok() && args.is_empty() {
        let root = root();
        outcome = run(Command::new(root.join(".ci/schemathesis.sh")).arg(root.join("target/debug/smartmart")));
        if outcome.is_ok() { totals.passed += 1 } else { totals.failed += 1 }
    }
    // One closing line over every test binary of every workspace, so that
    // the last word is not that of whichever binary happened to run last.
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    outcome
}

/// Passed and failed tests summed over `cargo test` runs.
#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Runs `cargo test` (or `npm test`), echoing its output, and adds its
/// `test result:` lines (node's `# pass N` / `# fail N`) to `totals`.
fn run_tests(cmd: &mut Command, totals: &mut Totals) -> Result {
    use std::io::BufRead as _;
    cmd.stdout(Stdio::piped());
    let program = Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
    eprintln!("$ {program} {}", cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let mut child = cmd.spawn().map_err(|e| format!("could not start {program}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading cargo's output: {e}"))?;
        println!("{line}");
        let node_count = |prefix: &str| line.strip_prefix(prefix).and_then(|n| n.trim().parse::<u64>().ok());
        if let Some(n) = node_count("# pass ") {
            totals.passed += n;
        } else if let Some(n) = node_count("# fail ") {
            totals.failed += n;
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| n.trim().rsplit(' ').next().unwrap_or("0").to_string())
                    })
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.passed += count(" passed");
            totals.failed += count(" failed");
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for {program}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("`{program} test` failed ({status})")) }
}

/// `cargo run -p smartmart -- [subcommand] args…` (one stage).
fn smartmart_run(subcommand: Option<&str>, args: &[String], stages: &mut Stages) -> Result {
    // The service runs optimised; the demo and the rule tools share the
    // test build (dependencies are optimised in every profile).
    let serve = subcommand == Some("serve");
    let profile: &[&str] = if serve { &["--release"] } else { &[] };
    let binary = root().join(if serve { "target/release/smartmart" } else { "target/debug/smartmart" });
    let what = match subcommand {
        Some("serve") => "building and starting the service",
        Some("demo") => "building and running the demo",
        _ => "building and running smartmart",
    };
    let first = if binary.is_file() { "" } else { " (first build compiles wasmtime: 10–20 minutes on 2 cores)" };
    stages.start(format_args!("{what}{first}…"));
    run(cargo().args(["run", "-p", "smartmart"]).args(profile).arg("--").args(subcommand).args(args))
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn only_what_cargo_run_says_of_xtask_itself_is_dropped_from_the_cargo_it_starts() {
        for dropped in
            ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_PKG_VERSION", "CARGO_BIN_NAME"]
        {
            assert!(set_by_cargo_run(dropped), "{dropped}");
        }
        // The user's settings and the path to cargo itself stay.
        for kept in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS", "CARGO_TERM_COLOR", "RUSTFLAGS"] {
            assert!(!set_by_cargo_run(kept), "{kept}");
        }
    }
}
