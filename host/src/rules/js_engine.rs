//! The JavaScript engine a JavaScript rule embeds, without a clock or
//! randomness, so that the same rule source always builds to the same
//! component (`smartmart rules js-engine`, run by the template's
//! `npm run build`).
//!
//! A JavaScript rule is built by componentize-qjs: it links its QuickJS
//! runtime (a core module) with the rule's bindings, runs the rule's
//! top-level code once under Wizer and snapshots the memory into the
//! component. During that run the runtime draws a hash seed
//! (`wasi:random/insecure-seed`, for Rust's `HashMap`) and reads the clock
//! (`wasi:clocks/*`, QuickJS seeds `Math.random` with it), and the snapshot
//! keeps what they returned: two builds of one source differed in a few
//! bytes, so in digest. The componentizer gives no way to pin them, so the
//! build gets a runtime that never asks: the pinned runtime of the installed
//! componentize-qjs with those imports replaced by functions answering
//! zero. A rule has no clock or randomness anyway (the host grants neither),
//! and a fresh instance per call has no use for a secret hash seed.
//!
//! The runtime is not a file of the npm package: it is embedded in its
//! native binding. It is found there by its exact length and sha256 (that of
//! `runtime-sync.wasm` of componentize-qjs 0.4.5, the version the template
//! pins), so another version is refused by name rather than half-understood.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use sha2::{Digest, Sha256};
use wasm_encoder::reencode::{self, Reencode};
use wasm_encoder::{Function, Instruction, MemArg};

/// The runtime this host knows: componentize-qjs's non-async QuickJS runtime.
#[derive(Debug, Clone, Copy)]
pub struct Pin {
    /// The componentize-qjs version it comes with (for messages).
    pub version: &'static str,
    pub len: usize,
    pub sha256: &'static str,
}

/// `runtime-sync.wasm` of componentize-qjs 0.4.5.
pub const COMPONENTIZE_QJS: Pin = Pin {
    version: "0.4.5",
    len: 1_497_910,
    sha256: "25703f010b80efb806f9c35daf9ee6524ad60320c9781b0bae4e234264f8dac5",
};

/// Where npm installs componentize-qjs's native binding for this platform.
const BINDINGS: &str = "node_modules/@andreiltd";

/// The engine for the project in `project` (its `node_modules`), ready for
/// `componentize-qjs --runtime`.
pub fn from_project(project: &Path, pin: Pin) -> anyhow::Result<Vec<u8>> {
    let bindings = native_bindings(project)?;
    for binding in &bindings {
        let bytes = std::fs::read(binding).with_context(|| format!("reading {}", binding.display()))?;
        if let Some(runtime) = find(&bytes, pin) {
            return without_clock_and_randomness(runtime);
        }
    }
    let found: Vec<String> = bindings.iter().map(|b| b.display().to_string()).collect();
    Err(anyhow!(
        "none of {} holds the QuickJS runtime of componentize-qjs {} (sha256 {}): install the \
         version the project pins (`npm ci`)",
        found.join(", "),
        pin.version,
        pin.sha256
    ))
}

/// The `.node` files of the installed componentize-qjs bindings.
fn native_bindings(project: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = project.join(BINDINGS);
    let missing =
        || format!("{} has no componentize-qjs binding: run `npm ci` in {} first", dir.display(), project.display());
    let mut found = Vec::new();
    for package in std::fs::read_dir(&dir).with_context(missing)? {
        let package = package?.path();
        if !package.file_name().is_some_and(|n| n.to_string_lossy().starts_with("componentize-qjs-binding-")) {
            continue;
        }
        for file in std::fs::read_dir(&package)? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "node") {
                found.push(file);
            }
        }
    }
    if found.is_empty() {
        anyhow::bail!(missing());
    }
    found.sort();
    Ok(found)
}

/// The pinned module within `binary`, if it is there.
pub fn find(binary: &[u8], pin: Pin) -> Option<&[u8]> {
    const MAGIC: &[u8] = b"\0asm\x01\0\0\0";
    let mut from = 0;
    while let Some(offset) = binary.get(from..)?.windows(MAGIC.len()).position(|w| w == MAGIC) {
        let start = from + offset;
        let candidate = binary.get(start..start + pin.len)?;
        if hex::encode(Sha256::digest(candidate)) == pin.sha256 {
            return Some(candidate);
        }
        from = start + 1;
    }
    None
}

/// What an entropy import is replaced with.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// `insecure-seed: func() -> tuple<u64, u64>`: (0, 0) at the return pointer.
    Seed,
    /// `wall-clock.now: func() -> datetime`: { seconds: 0, nanoseconds: 0 } at the return pointer.
    WallClock,
    /// `monotonic-clock.now: func() -> instant`: 0.
    Instant,
}

fn answer(module: &str, name: &str) -> Option<Answer> {
    let interface = module.split('@').next()?;
    match (interface, name) {
        ("wasi:random/insecure-seed", "insecure-seed") => Some(Answer::Seed),
        ("wasi:clocks/wall-clock", "now") => Some(Answer::WallClock),
        ("wasi:clocks/monotonic-clock", "now") => Some(Answer::Instant),
        _ => None,
    }
}

/// `runtime` with its clock and seed imports replaced by functions that
/// answer zero: every other import, export and function is kept, with the
/// function indices renumbered around the removed imports.
pub fn without_clock_and_randomness(runtime: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut imported = Vec::new();
    let mut defined = 0;
    for payload in wasmparser::Parser::new(0).parse_all(runtime) {
        match payload? {
            wasmparser::Payload::ImportSection(section) => {
                for import in section.into_imports() {
                    let import = import?;
                    if let wasmparser::TypeRef::Func(ty) = import.ty {
                        imported.push((ty, answer(import.module, import.name)));
                    }
                }
            }
            wasmparser::Payload::FunctionSection(section) => defined = section.count(),
            _ => {}
        }
    }
    let kept = imported.iter().filter(|(_, answer)| answer.is_none()).count() as u32;
    // Kept imports keep their order; the module's functions follow them;
    // the replacements come last.
    let mut renumbered = Replacer { map: Vec::new(), added: Vec::new() };
    let mut next_import = 0;
    for (ty, answer) in imported {
        match answer {
            None => {
                renumbered.map.push(next_import);
                next_import += 1;
            }
            Some(answer) => {
                renumbered.map.push(kept + defined + renumbered.added.len() as u32);
                renumbered.added.push((ty, answer));
            }
        }
    }
    renumbered.map.extend((0..defined).map(|i| kept + i));
    let mut module = wasm_encoder::Module::new();
    renumbered
        .parse_core_module(&mut module, wasmparser::Parser::new(0), runtime)
        .map_err(|e| anyhow!("rewriting the engine's imports: {e:?}"))?;
    Ok(module.finish())
}

/// Re-encodes a module without its entropy imports (see above).
struct Replacer {
    /// Old function index -> new.
    map: Vec<u32>,
    /// The replacements, appended after the module's own functions: their type and answer.
    added: Vec<(u32, Answer)>,
}

type ReencodeResult = Result<(), reencode::Error<std::convert::Infallible>>;

impl Reencode for Replacer {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, reencode::Error<Self::Error>> {
        Ok(self.map[func as usize])
    }

    fn parse_import_section(
        &mut self,
        imports: &mut wasm_encoder::ImportSection,
        section: wasmparser::ImportSectionReader<'_>,
    ) -> ReencodeResult {
        for import in section.into_imports() {
            let import = import?;
            if matches!(import.ty, wasmparser::TypeRef::Func(_)) && answer(import.module, import.name).is_some() {
                continue;
            }
            let ty = self.entity_type(import.ty)?;
            imports.import(import.module, import.name, ty);
        }
        Ok(())
    }

    fn parse_function_section(
        &mut self,
        functions: &mut wasm_encoder::FunctionSection,
        section: wasmparser::FunctionSectionReader<'_>,
    ) -> ReencodeResult {
        for ty in section {
            functions.function(self.type_index(ty?)?);
        }
        for (ty, _) in &self.added {
            functions.function(*ty);
        }
        Ok(())
    }

    fn parse_code_section(
        &mut self,
        code: &mut wasm_encoder::CodeSection,
        section: wasmparser::CodeSectionReader<'_>,
    ) -> ReencodeResult {
        for body in section {
            self.parse_function_body(code, body?)?;
        }
        for (_, answer) in &self.added {
            code.function(&body(*answer));
        }
        Ok(())
    }
}

/// The body answering zero (the return pointer is parameter 0, in memory 0).
fn body(answer: Answer) -> Function {
    let at = |offset, align| MemArg { offset, align, memory_index: 0 };
    let mut f = Function::new([]);
    match answer {
        Answer::Seed => {
            for offset in [0, 8] {
                f.instructions().local_get(0).i64_const(0).i64_store(at(offset, 3));
            }
        }
        Answer::WallClock => {
            f.instructions().local_get(0).i64_const(0).i64_store(at(0, 3));
            f.instructions().local_get(0).i32_const(0).i32_store(at(8, 2));
        }
        Answer::Instant => {
            f.instruction(&Instruction::I64Const(0));
        }
    }
    f.instruction(&Instruction::End);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_encoder::{
        CodeSection, EntityType, ExportKind, ExportSection, FunctionSection, ImportSection, MemoryType, Module,
        TypeSection, ValType,
    };

    /// A module importing a seed, a clock, a kept function and a memory,
    /// with one function calling each import (`call_seed`, `call_clock`, `call_kept`).
    fn module() -> Vec<u8> {
        let mut types = TypeSection::new();
        types.ty().function([ValType::I32], []); // 0: retptr
        types.ty().function([], [ValType::I64]); // 1: instant
        types.ty().function([], []); // 2
        let mut imports = ImportSection::new();
        imports.import("kept:x/y", "first", EntityType::Function(2));
        imports.import("wasi:random/insecure-seed@0.2.9", "insecure-seed", EntityType::Function(0));
        imports.import("env", "memory", EntityType::Memory(MemoryType { minimum: 1, ..mem() }));
        imports.import("wasi:clocks/monotonic-clock@0.2.0", "now", EntityType::Function(1));
        imports.import("kept:x/y", "second", EntityType::Function(2));
        let mut functions = FunctionSection::new();
        let mut code = CodeSection::new();
        let mut exports = ExportSection::new();
        for (name, callee, ty) in [("call_seed", 1, 2), ("call_clock", 2, 2), ("call_kept", 3, 2)] {
            functions.function(ty);
            let mut f = Function::new([]);
            match name {
                "call_seed" => f.instructions().i32_const(64).call(callee),
                "call_clock" => f.instructions().call(callee).drop(),
                _ => f.instructions().call(callee),
            };
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        for (i, name) in ["call_seed", "call_clock", "call_kept"].into_iter().enumerate() {
            exports.export(name, ExportKind::Func, 4 + i as u32);
        }
        let mut module = Module::new();
        module.section(&types).section(&imports).section(&functions).section(&exports).section(&code);
        module.finish()
    }

    fn mem() -> MemoryType {
        MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None }
    }

    #[test]
    fn the_clock_and_seed_imports_become_functions_and_the_rest_is_kept() {
        let original = module();
        wasmparser::validate(&original).expect("the test module is valid");
        let rewritten = without_clock_and_randomness(&original).unwrap();
        wasmparser::validate(&rewritten).expect("the rewritten module is valid");
        let mut imports = Vec::new();
        let mut calls = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&rewritten) {
            match payload.unwrap() {
                wasmparser::Payload::ImportSection(s) => {
                    imports.extend(s.into_imports().map(|i| i.unwrap()).map(|i| format!("{} {}", i.module, i.name)));
                }
                wasmparser::Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().unwrap();
                    let mut callees = Vec::new();
                    while !ops.eof() {
                        if let wasmparser::Operator::Call { function_index } = ops.read().unwrap() {
                            callees.push(function_index);
                        }
                    }
                    calls.push(callees);
                }
                _ => {}
            }
        }
        assert_eq!(imports, ["kept:x/y first", "env memory", "kept:x/y second"]);
        // 2 kept imports (0, 1), the 3 functions (2, 3, 4), then the seed (5) and the clock (6).
        assert_eq!(calls, [vec![5], vec![6], vec![1], vec![], vec![]]);
    }

    #[test]
    fn the_engine_is_found_by_its_length_and_digest_only() {
        let engine = module();
        let pin = Pin {
            version: "test",
            len: engine.len(),
            sha256: Box::leak(hex::encode(Sha256::digest(&engine)).into_boxed_str()),
        };
        let mut binary = b"ELF....\0asm\x01\0\0\0 a decoy".to_vec();
        binary.extend_from_slice(&engine);
        binary.extend_from_slice(b"trailing bytes");
        assert_eq!(find(&binary, pin), Some(engine.as_slice()));
        let mut changed = engine.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert_eq!(find(&changed, pin), None);
        assert_eq!(find(&binary[..binary.len() - 20], pin), None);
    }
}
