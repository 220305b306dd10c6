//! `smartmart rules new`: writes a self-contained rule project into any
//! folder — the contract (a vendored copy of `wit/`), the rule's source with
//! its world's types, an example input with its expected answer, a test, a
//! README with the one build command and the manifest entry — so that a new
//! rule goes from an empty folder to `rules check` and `rules run --expect`
//! passing without editing a path.
//!
//! The templates live in `host/templates/rules/` and are embedded into the
//! binary, like the WIT files, so the command works wherever `smartmart`
//! is installed. The Rust and JavaScript templates of a world implement the
//! same decision, so they share one example input and expected answer.

use std::path::{Path, PathBuf};

use super::world::{CONTRACT, World};

/// The language a new rule is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A wit-bindgen crate built with `cargo build --target wasm32-wasip2`.
    Rust,
    /// Arrow functions over the order, componentized with componentize-qjs
    /// (QuickJS).
    Js,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "rust" => Some(Lang::Rust),
            "js" | "javascript" => Some(Lang::Js),
            _ => None,
        }
    }
}

/// What `rules new` was asked for.
#[derive(Debug, Clone)]
pub struct NewRule {
    /// Rule name, kebab-case (`my-rule`): the package name and what
    /// `meta.info` reports; the component is `my_rule.wasm`.
    pub name: String,
    pub world: World,
    pub lang: Lang,
    /// The project folder: created if absent, else it must be empty.
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "invalid rule name {0:?}: use 1 to 64 lower-case letters, digits and single dashes, \
         starting with a letter (e.g. `spring-sale`)"
    )]
    InvalidName(String),
    #[error("{0} is not empty: `rules new` writes only into a new or empty folder")]
    NotEmpty(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The contract, vendored into every project (`wit/`).
pub(crate) const WIT: [(&str, &str); 4] = [
    ("wit/types.wit", include_str!("../../../wit/types.wit")),
    ("wit/discount.wit", include_str!("../../../wit/discount.wit")),
    ("wit/warehouse.wit", include_str!("../../../wit/warehouse.wit")),
    ("wit/fraud.wit", include_str!("../../../wit/fraud.wit")),
];

macro_rules! template {
    ($path:literal) => {
        include_str!(concat!("../../templates/rules/", $path))
    };
}

/// Pinned dependency versions: the example rule's lock file (wit-bindgen
/// 0.63) and the JavaScript example's (componentize-qjs), renamed per project,
/// so that a new project builds with exactly what this repository tests.
const RUST_LOCK: &str = include_str!("../../../examples/rules/clearance/Cargo.lock");
const JS_LOCK: &str = include_str!("../../../examples/rules/coupons-js/package-lock.json");

/// The files of a new project, as (relative path, contents).
pub fn render(spec: &NewRule) -> Result<Vec<(String, String)>, ScaffoldError> {
    validate_name(&spec.name)?;
    let world = spec.world;
    let mut files: Vec<(String, &str)> = Vec::new();
    for (path, text) in WIT {
        files.push((path.into(), text));
    }
    let (input, expected) = match world {
        World::DiscountRule => {
            (template!("examples/discount.input.json"), template!("examples/discount.expected.json"))
        }
        World::WarehouseSelector => {
            (template!("examples/warehouse.input.json"), template!("examples/warehouse.expected.json"))
        }
        World::FraudCheck => (template!("examples/fraud.input.json"), template!("examples/fraud.expected.json")),
    };
    files.push(("examples/order.input.json".into(), input));
    files.push(("examples/order.expected.json".into(), expected));
    match spec.lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), template!("rust/Cargo.toml")));
            files.push(("README.md".into(), template!("rust/README.md")));
            files.push((".gitignore".into(), template!("rust/gitignore")));
            let lib = match world {
                World::DiscountRule => template!("rust/discount.rs"),
                World::WarehouseSelector => template!("rust/warehouse.rs"),
                World::FraudCheck => template!("rust/fraud.rs"),
            };
            files.push(("src/lib.rs".into(), lib));
        }
        Lang::Js => {
            files.push(("package.json".into(), template!("js/package.json")));
            files.push(("README.md".into(), template!("js/README.md")));
            files.push((".gitignore".into(), template!("js/gitignore")));
            let (rule, glue, test) = match world {
                World::DiscountRule => (
                    template!("js/discount.rule.js"),
                    template!("js/discount.glue.js"),
                    template!("js/discount.test.js"),
                ),
                World::WarehouseSelector => (
                    template!("js/warehouse.rule.js"),
                    template!("js/warehouse.glue.js"),
                    template!("js/warehouse.test.js"),
                ),
                World::FraudCheck => {
                    (template!("js/fraud.rule.js"), template!("js/fraud.glue.js"), template!("js/fraud.test.js"))
                }
            };
            files.push(("rule.js".into(), rule));
            files.push(("glue.js".into(), glue));
            files.push(("rule.test.js".into(), test));
            files.push(("convert.js".into(), template!("js/convert.js")));
            files.push(("examples.test.js".into(), template!("js/examples.test.js")));
            files.push(("jsconfig.json".into(), template!("js/jsconfig.json")));
        }
    }
    let vars = Vars::new(spec);
    let mut out: Vec<(String, String)> = files.into_iter().map(|(path, text)| (path, vars.apply(text))).collect();
    if spec.lang == Lang::Js {
        // Generated from the contract vendored above, never written by hand.
        let types = super::typescript::from_sources(&WIT, world).expect("the embedded contract has every world");
        out.push(("types.d.ts".into(), types));
    }
    out.push(match spec.lang {
        Lang::Rust => ("Cargo.lock".into(), rust_lock(&vars.crate_name)),
        Lang::Js => ("package-lock.json".into(), js_lock(&spec.name)),
    });
    Ok(out)
}

/// Writes the project into `spec.dir`; returns the files written, relative to it.
pub fn create(spec: &NewRule) -> Result<Vec<String>, ScaffoldError> {
    let files = render(spec)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ScaffoldError::Io { path, source }
    };
    match std::fs::read_dir(&spec.dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ScaffoldError::NotEmpty(spec.dir.clone()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&spec.dir)(e)),
    }
    for (relative, text) in &files {
        let path = spec.dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

fn validate_name(name: &str) -> Result<(), ScaffoldError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok { Ok(()) } else { Err(ScaffoldError::InvalidName(name.to_owned())) }
}

/// The placeholders of the templates, `{{name}}` and the like.
struct Vars {
    pairs: Vec<(&'static str, String)>,
    crate_name: String,
}

impl Vars {
    fn new(spec: &NewRule) -> Vars {
        let crate_name = spec.name.replace('-', "_");
        let world = spec.world;
        let manifest_table = match world {
            World::WarehouseSelector => "[warehouse]",
            World::DiscountRule => "[[discount]]",
            World::FraudCheck => "[[fraud]]",
        };
        let pairs = vec![
            ("{{name}}", spec.name.clone()),
            ("{{crate}}", crate_name.clone()),
            ("{{world}}", world.name().to_owned()),
            ("{{slot}}", world.slot().to_string()),
            ("{{manifest_table}}", manifest_table.to_owned()),
            ("{{contract}}", CONTRACT.to_owned()),
            ("{{contract_version}}", CONTRACT.split_once('@').map_or("", |(_, v)| v).to_owned()),
            ("{{description}}", description(world).to_owned()),
            ("{{smartmart_version}}", env!("CARGO_PKG_VERSION").to_owned()),
        ];
        Vars { pairs, crate_name }
    }

    fn apply(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (key, value) in &self.pairs {
            text = text.replace(key, value);
        }
        text
    }
}

/// What the template rule of `world` does (the same in Rust and JavaScript).
fn description(world: World) -> &'static str {
    match world {
        World::DiscountRule => {
            "A percentage (default 5) off what is left to pay, for customers of one tier (default GOLD)."
        }
        World::WarehouseSelector => "Ships the whole order from the first candidate warehouse that has every line.",
        World::FraudCheck => "Orders whose total reaches threshold_cents (default 100000) go to review.",
    }
}

/// The example rule's `Cargo.lock` with its root package renamed.
fn rust_lock(crate_name: &str) -> String {
    RUST_LOCK.replace("name = \"clearance\"\n", &format!("name = \"{crate_name}\"\n"))
}

/// The JavaScript example's `package-lock.json` with its root package renamed.
fn js_lock(name: &str) -> String {
    // The lock names its root twice: at the top and as the `""` package.
    JS_LOCK.replace("\"name\": \"coupons-js\"", &format!("\"name\": \"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(world: World, lang: Lang) -> NewRule {
        NewRule { name: "spring-sale".into(), world, lang, dir: PathBuf::from("unused") }
    }

    #[test]
    fn every_placeholder_is_filled_in_every_project() {
        for world in World::ALL {
            for lang in [Lang::Rust, Lang::Js] {
                for (path, text) in render(&spec(world, lang)).unwrap() {
                    assert!(!text.contains("{{"), "{world:?} {lang:?} {path}: an unfilled placeholder");
                    assert!(!text.contains("coupons-js"), "{world:?} {lang:?} {path}");
                }
            }
        }
    }

    #[test]
    fn projects_vendor_the_contract_and_rename_the_lock() {
        let files = render(&spec(World::FraudCheck, Lang::Rust)).unwrap();
        let find = |p: &str| files.iter().find(|(path, _)| path == p).map(|(_, t)| t.as_str()).unwrap();
        assert!(find("wit/types.wit").starts_with(&format!("package {CONTRACT};")));
        assert!(find("Cargo.lock").contains("name = \"spring_sale\"\n"));
        assert!(!find("Cargo.lock").contains("clearance"));
        assert!(find("Cargo.toml").contains("name = \"spring-sale\""));
        assert!(find("src/lib.rs").contains("world: \"fraud-check\""));
        let files = render(&spec(World::WarehouseSelector, Lang::Js)).unwrap();
        let lock = files.iter().find(|(path, _)| path == "package-lock.json").unwrap();
        assert!(lock.1.contains("\"name\": \"spring-sale\"") && !lock.1.contains("coupons-js"));
    }

    /// The JavaScript example is a project of this scaffold: its glue,
    /// conversions, example test and types are the templates' own, so what
    /// the example proves holds for every new JavaScript rule.
    #[test]
    fn the_js_example_runs_the_scaffolds_glue() {
        let mut example_spec = spec(World::DiscountRule, Lang::Js);
        example_spec.name = "coupons-js".into();
        let files = render(&example_spec).unwrap();
        let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/rules/coupons-js"));
        for name in ["glue.js", "convert.js", "examples.test.js", "jsconfig.json", "types.d.ts"] {
            let rendered = files.iter().find(|(path, _)| path == name).unwrap();
            let committed = std::fs::read_to_string(example.join(name)).unwrap();
            assert_eq!(committed, rendered.1, "examples/rules/coupons-js/{name} differs from the template");
        }
    }

    #[test]
    fn names_must_be_kebab_case() {
        for good in ["a", "spring-sale", "rule2", "x-1-y"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Spring", "1rule", "-a", "a-", "a--b", "a_b", "a b", "ü", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_only_into_a_new_or_empty_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let mut new = spec(World::DiscountRule, Lang::Rust);
        new.dir = tmp.path().to_owned();
        let written = create(&new).unwrap();
        assert!(written.contains(&"src/lib.rs".to_owned()));
        assert!(tmp.path().join("wit/discount.wit").is_file());
        assert!(matches!(create(&new), Err(ScaffoldError::NotEmpty(_))));
    }
}
