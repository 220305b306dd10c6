//! TypeScript definitions of a rule world, generated from `wit/`, for the
//! JavaScript rule template (`rules new --lang js` writes them as
//! `types.d.ts`; `rules types` writes them again from a project's `wit/`).
//!
//! The definitions describe what `rule.js` sees and returns, which is the
//! shape `convert.js` and `glue.js` make of the host's values: snake_case
//! fields, every integer a `number` (64-bit ones checked exact on the way in
//! and out), enums as their upper-case names, `option<T>` as `T | null`. The
//! record, enum and error types come from the WIT, so a contract change
//! shows up in the editor; what the glue adds (the `config` and `log`
//! arguments, the optional `reasons`/`flags`/`rule` of an answer, a plain
//! number for a discount) is the template's own convention, stated here once.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, anyhow};
use wit_parser::{Docs, Function, Resolve, Type, TypeDefKind, TypeId, WorldItem};

use super::world::World;

/// The definitions for `world` of the WIT package in `dir` (a project's `wit/`).
pub fn from_dir(dir: &Path, world: World) -> anyhow::Result<String> {
    let mut resolve = Resolve::default();
    let (package, _) =
        resolve.push_dir(dir).with_context(|| format!("reading the WIT package in {}", dir.display()))?;
    generate(&resolve, package, world)
}

/// The definitions for `world` of the WIT files given as (file name, text).
pub fn from_sources(files: &[(&str, &str)], world: World) -> anyhow::Result<String> {
    let mut map = wit_parser::SourceMap::new();
    for (name, text) in files {
        map.push_str(name, *text);
    }
    let group = map.parse().map_err(|(_, e)| anyhow!("parsing the WIT package: {e}"))?;
    let mut resolve = Resolve::default();
    let package = resolve.push_group(group).map_err(|e| anyhow!("resolving the WIT package: {e}"))?;
    generate(&resolve, package, world)
}

fn generate(resolve: &Resolve, package: wit_parser::PackageId, world: World) -> anyhow::Result<String> {
    let world_id = resolve.select_world(&[package], Some(world.name()))?;
    let package_name = resolve.packages[package].name.to_string();
    let mut out = Generator { resolve, emitted: Vec::new(), body: String::new() };
    let mut header = format!(
        "// The types of a `{}` rule ({package_name}) as rule.js sees them: generated\n\
         // from wit/ by `smartmart rules types`. Do not edit; regenerate after a\n\
         // contract change:\n\
         //   smartmart rules types --world {} --wit wit --out types.d.ts\n\
         //\n\
         // The shape is the one convert.js makes of the host's values: snake_case\n\
         // fields, every integer a number (64-bit amounts are exact below 2^53: a\n\
         // larger one fails the call, it is never rounded), enums as their\n\
         // upper-case names, an absent option as null.\n",
        world.name(),
        world.name(),
    );
    let mut exports = Vec::new();
    for item in resolve.worlds[world_id].exports.values() {
        if let WorldItem::Interface { id, .. } = item {
            exports.push(*id);
        }
    }
    // `meta` gives `info`; the other export is the slot's function(s).
    for id in exports {
        let interface = &resolve.interfaces[id];
        if interface.name.as_deref() == Some("meta") {
            let info = interface.types.get("rule-info").context("meta has no rule-info")?;
            out.named(
                *info,
                Side::Answer,
                Some("What rule.js exports as `info` (reported by `rules check` and the service)."),
            );
            continue;
        }
        for function in interface.functions.values() {
            out.function(function)?;
        }
    }
    header.push_str(&out.common());
    header.push_str(&out.body);
    Ok(header)
}

/// Whether a type is read by the rule (an argument) or written by it (an
/// answer): answers may leave out what the glue fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Argument,
    Answer,
}

struct Generator<'a> {
    resolve: &'a Resolve,
    /// Named types already written.
    emitted: Vec<TypeId>,
    body: String,
}

impl Generator<'_> {
    /// `Config` and `Log`: the glue's arguments, the same in every world.
    fn common(&self) -> String {
        let levels = self
            .resolve
            .interfaces
            .iter()
            .find(|(_, i)| i.name.as_deref() == Some("log"))
            .and_then(|(_, i)| i.types.get("level"))
            .and_then(|id| match &self.resolve.types[*id].kind {
                TypeDefKind::Enum(e) => Some(e.cases.iter().map(|c| c.name.clone()).collect::<Vec<_>>()),
                _ => None,
            })
            .unwrap_or_default();
        let mut out = String::from(
            "\n/** The module's `config` table from the plug-in manifest: strings only; the rule parses them. */\n\
             export type Config = Readonly<Record<string, string>>;\n\
             \n/** Structured logging into the service's log (and `rules run`'s report): `log.info('message', { key: value })`. */\n\
             export interface Log {\n",
        );
        for level in levels {
            let _ = writeln!(out, "  {level}(message: string, fields?: Record<string, unknown>): void;");
        }
        out.push_str("}\n");
        out
    }

    fn function(&mut self, function: &Function) -> anyhow::Result<()> {
        let Some(Type::Id(result)) = function.result else {
            anyhow::bail!("{} returns no result<…>", function.name);
        };
        let TypeDefKind::Result(result) = &self.resolve.types[result].kind else {
            anyhow::bail!("{} returns no result<…>", function.name);
        };
        let mut params = Vec::new();
        for param in &function.params {
            params.push(format!("{}: {}", snake(&param.name), self.ty(param.ty, Side::Argument)));
        }
        let ok = result.ok.map(|t| self.ty(t, Side::Answer)).unwrap_or_else(|| "void".into());
        params.push("config: Config".into());
        params.push("log: Log".into());
        // The discount glue takes a plain number of cents for one line.
        let answer = if function.name == "apply" { format!("{ok} | number") } else { ok };
        let codes = result.err.map(|e| self.error_codes(e)).transpose()?.unwrap_or_default();
        let type_name = pascal(&function.name);
        self.body.push('\n');
        self.docs(&function.docs, "");
        let _ = writeln!(
            self.body,
            "export type {type_name} = ({}) => {answer};\n\n\
             /** What rule.js may throw as `Object.assign(new Error(why), {{ code }})`; anything else is the rule's failure. */\n\
             export type {type_name}ErrorCode = {};",
            params.join(", "),
            if codes.is_empty() { "never".to_owned() } else { codes.join(" | ") },
        );
        Ok(())
    }

    /// The codes of an error variant a rule may throw (all but `internal`,
    /// which the glue makes of anything else thrown).
    fn error_codes(&mut self, error: Type) -> anyhow::Result<Vec<String>> {
        let Type::Id(id) = error else { anyhow::bail!("the error of a rule function must be a variant") };
        let TypeDefKind::Variant(variant) = &self.resolve.types[id].kind else {
            anyhow::bail!("the error of a rule function must be a variant");
        };
        let mut codes = Vec::new();
        for case in variant.cases.iter().filter(|c| c.name != "internal") {
            // A payload record (cannot-fulfil's shortfall) travels as the error's fields.
            if let Some(payload @ Type::Id(_)) = case.ty {
                let ty = self.ty(payload, Side::Answer);
                if ty != "string" {
                    codes.push(format!("'{}' /* with the fields of {ty} */", case.name));
                    continue;
                }
            }
            codes.push(format!("'{}'", case.name));
        }
        Ok(codes)
    }

    /// The TypeScript type of `ty`, writing named types it needs on the way.
    fn ty(&mut self, ty: Type, side: Side) -> String {
        match ty {
            Type::Bool => "boolean".into(),
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => "number".into(),
            Type::S8 | Type::S16 | Type::S32 | Type::S64 | Type::F32 | Type::F64 => "number".into(),
            Type::Char | Type::String | Type::ErrorContext => "string".into(),
            Type::Id(id) => {
                let def = &self.resolve.types[id];
                match (&def.name, &def.kind) {
                    (_, TypeDefKind::Type(inner)) => self.ty(*inner, side),
                    (Some(_), TypeDefKind::Record(_) | TypeDefKind::Enum(_) | TypeDefKind::Variant(_)) => {
                        self.named(id, side, None)
                    }
                    (_, TypeDefKind::List(inner)) => format!("{}[]", self.ty(*inner, side)),
                    (_, TypeDefKind::Option(inner)) => format!("{} | null", self.ty(*inner, side)),
                    (_, TypeDefKind::Tuple(t)) => {
                        let items: Vec<String> = t.types.iter().map(|t| self.ty(*t, side)).collect();
                        format!("[{}]", items.join(", "))
                    }
                    _ => "unknown".into(),
                }
            }
        }
    }

    /// Writes the named type `id` once and returns its name.
    fn named(&mut self, id: TypeId, side: Side, undocumented: Option<&str>) -> String {
        let def = &self.resolve.types[id];
        let name = pascal(def.name.as_deref().unwrap_or("anonymous"));
        // A record both read and written by a rule (none in 0.1.0) would need
        // two names; it is written once, for the side that meets it first.
        if self.emitted.contains(&id) {
            return name;
        }
        self.emitted.push(id);
        let mut text = String::new();
        match &def.kind {
            TypeDefKind::Record(record) => {
                let mut fields = Vec::new();
                for field in &record.fields {
                    let ty = self.ty(field.ty, side);
                    // The glue reads a missing `reasons`/`flags` list as [] and a
                    // missing discount line `rule` as the rule's own name.
                    let optional = side == Side::Answer && (ty == "string[]" || field.name == "rule");
                    fields.push((field, ty, optional));
                }
                let _ = writeln!(text, "export interface {name} {{");
                for (field, ty, optional) in fields {
                    if let Some(docs) = &field.docs.contents {
                        let _ = writeln!(text, "  /** {} */", one_line(docs));
                    }
                    let _ = writeln!(text, "  {}{}: {ty};", snake(&field.name), if optional { "?" } else { "" });
                }
                text.push_str("}\n");
            }
            TypeDefKind::Enum(e) => {
                let cases: Vec<String> = e.cases.iter().map(|c| format!("'{}'", c.name.to_uppercase())).collect();
                let _ = writeln!(text, "export type {name} = {};", cases.join(" | "));
            }
            TypeDefKind::Variant(v) => {
                let cases: Vec<String> = v.cases.iter().map(|c| format!("'{}'", c.name)).collect();
                let _ = writeln!(text, "export type {name} = {};", cases.join(" | "));
            }
            _ => {}
        }
        let mut block = String::from("\n");
        if let Some(docs) = def.docs.contents.as_deref().or(undocumented) {
            let _ = writeln!(block, "/** {} */", one_line(docs));
        }
        block.push_str(&text);
        self.body.push_str(&block);
        name
    }

    fn docs(&mut self, docs: &Docs, indent: &str) {
        if let Some(docs) = &docs.contents {
            let _ = writeln!(self.body, "{indent}/** {} */", one_line(docs));
        }
    }
}

/// A WIT doc comment on one line (the generated file stays diff-friendly).
fn one_line(docs: &str) -> String {
    docs.split_whitespace().collect::<Vec<_>>().join(" ").replace("*/", "* /")
}

/// `unit-price-cents` -> `unit_price_cents`: the field names of rule.js's JSON.
fn snake(name: &str) -> String {
    name.replace('-', "_")
}

/// `order-context` -> `OrderContext`.
fn pascal(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::scaffold::WIT;

    fn types(world: World) -> String {
        from_sources(&WIT, world).unwrap()
    }

    #[test]
    fn the_order_is_typed_as_rule_js_sees_it() {
        let discount = types(World::DiscountRule);
        assert!(discount.contains("export type Tier = 'GOLD' | 'SILVER' | 'STANDARD';"), "{discount}");
        assert!(discount.contains("  unit_price_cents: number;\n"), "{discount}");
        assert!(discount.contains("  coupon_code: string | null;\n"), "{discount}");
        assert!(discount.contains("  lines: CartLine[];\n"), "{discount}");
        assert!(
            discount.contains(
                "export type Apply = (order: OrderContext, config: Config, log: Log) => DiscountLine[] | number;"
            ),
            "{discount}"
        );
        assert!(discount.contains("export type ApplyErrorCode = 'invalid-coupon' | 'bad-config';"), "{discount}");
        // What the glue fills in may be left out of an answer.
        assert!(discount.contains("  rule?: string;\n") && discount.contains("  reasons?: string[];\n"), "{discount}");
        assert!(discount.contains("  amount_cents: number;\n"), "{discount}");
    }

    #[test]
    fn every_world_has_its_function_and_errors() {
        let fraud = types(World::FraudCheck);
        assert!(fraud.contains("export type Check = (order: OrderContext, payment: PaymentSummary, config: Config, log: Log) => Verdict;"), "{fraud}");
        assert!(fraud.contains("export type Action = 'ALLOW' | 'REVIEW' | 'ESCALATE';"), "{fraud}");
        assert!(fraud.contains("  flags?: string[];\n"), "{fraud}");
        let warehouse = types(World::WarehouseSelector);
        assert!(
            warehouse.contains("(order: OrderContext, candidates: Candidate[], config: Config, log: Log) => Plan;")
        );
        assert!(warehouse.contains("'cannot-fulfil' /* with the fields of Shortfall */"), "{warehouse}");
        // The plan's allocations are required: the glue reads them as given.
        assert!(warehouse.contains("  allocations: Allocation[];\n"), "{warehouse}");
        for text in [fraud, warehouse] {
            assert!(text.contains("export interface RuleInfo {"));
            assert!(text.contains("  debug(message: string, fields?: Record<string, unknown>): void;"));
        }
    }

    #[test]
    fn a_project_wit_folder_gives_the_same_types() {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in WIT {
            let path = dir.path().join(path.trim_start_matches("wit/"));
            std::fs::write(path, text).unwrap();
        }
        assert_eq!(from_dir(dir.path(), World::DiscountRule).unwrap(), types(World::DiscountRule));
    }
}
