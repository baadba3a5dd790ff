//! The AMX matrix kernels' tile configuration (patches/0009): `ggml-cpu/amx/mmq.cpp`, compiled
//! exactly as the build compiled it but for an AMX CPU, must store the whole 64-byte
//! configuration before the `ldtilecfg` that reads it. GCC 12 at -O3 drops those stores from the
//! unpatched file (llama.cpp issue #20824), and every AMX host then crashes on its first prompt.
//!
//! No AMX hardware is needed: the assembly is read, not run. The stores before each `ldtilecfg`
//! are followed through a small model of the x86-64 moves GCC and clang emit for them, and the
//! bytes `ldtilecfg` would load are compared with the configuration the source writes. The
//! runtime half (AMX-repacked weights against plain ones on both models) is
//! `crates/turboquant-cli/tests/repack.rs`, which runs where the CPU has AMX.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The configuration `ggml_tile_config_init()` writes: palette 1; tiles 0-1 (B) 8 rows of 64
/// bytes, tiles 2-3 (A) 16 rows of 32 bytes, tiles 4-7 (C) 16 rows of 64 bytes.
fn expected_config() -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    let tiles: [(u8, u16); 8] = [
        (8, 64),
        (8, 64),
        (16, 32),
        (16, 32),
        (16, 64),
        (16, 64),
        (16, 64),
        (16, 64),
    ];
    for (i, (rows, colsb)) in tiles.into_iter().enumerate() {
        c[16 + 2 * i..18 + 2 * i].copy_from_slice(&colsb.to_le_bytes());
        c[48 + i] = rows;
    }
    c
}

/// A line in the test's output even when cargo captures it (a passing test's `eprintln!` is
/// hidden): what ran, what was skipped and why.
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "note (amx): {text}");
}

const MMQ: &str = "ggml-cpu/amx/mmq.cpp";

/// How the build compiled `mmq.cpp`: (working directory, arguments), one per CPU variant.
fn build_commands() -> Vec<(PathBuf, Vec<String>)> {
    let path = env!("TURBOQUANT_COMPILE_COMMANDS");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the build's compile commands ({path}): {e}"));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid JSON");
    entries
        .iter()
        .filter(|e| e["file"].as_str().is_some_and(|f| f.ends_with(MMQ)))
        .map(|e| {
            let args = match e["arguments"].as_array() {
                Some(a) => a.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
                None => shlex::split(e["command"].as_str().expect("a command"))
                    .expect("a command that splits into words"),
            };
            (PathBuf::from(e["directory"].as_str().unwrap()), args)
        })
        .collect()
}

/// The build's command for `mmq.cpp`, made to compile `source` to assembly for a Sapphire Rapids
/// CPU (AMX-INT8, AVX512-VNNI: what `-march=native` gives on an AMX host) and to leave the build
/// folder untouched (no object, no dependency file).
fn assembly_command(args: &[String], source: &Path, asm: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut words = args.iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "-o" | "-MT" | "-MF" | "-MQ" => {
                words.next();
            }
            "-c" | "-MD" | "-MMD" => {}
            _ if w.ends_with(MMQ) => {}
            _ => out.push(w.clone()),
        }
    }
    out.extend(["-march=sapphirerapids".to_string(), "-S".to_string()]);
    out.push("-o".into());
    out.push(asm.display().to_string());
    out.push(source.display().to_string());
    out
}

fn compile_to_assembly(dir: &Path, args: &[String], source: &Path) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let asm = scratch.path().join("mmq.s");
    let cmd = assembly_command(args, source, &asm);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cmd[0]));
    assert!(
        out.status.success(),
        "compiling {} for an AMX CPU failed: {}\n{}",
        source.display(),
        cmd.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(&asm).unwrap()
}

/// The compiler's name and major version, from `--version`: ("gcc", 12), ("clang", 17).
fn compiler(program: &str) -> (String, u32) {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .expect("the compiler runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let kind = if text.contains("clang") {
        "clang"
    } else {
        "gcc"
    };
    let major = first
        .split_whitespace()
        .rev()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
        .unwrap_or(0);
    (kind.to_string(), major)
}

// ---- a small model of the moves that fill a tile configuration --------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Byte {
    Known(u8),
    Unknown,
}

/// A register's value: 64 bytes for a vector register (xmm/ymm/zmm N share one), 8 for a GPR.
type Value = Vec<Byte>;

fn known(bytes: &[u8], width: usize) -> Value {
    (0..width)
        .map(|i| Byte::Known(*bytes.get(i).unwrap_or(&0)))
        .collect()
}

/// A register operand: its family (`rax`, `v3`) and the width written or read, in bytes.
fn register(op: &str) -> Option<(String, usize)> {
    let name = op.strip_prefix('%')?;
    for (prefix, width) in [("xmm", 16), ("ymm", 32), ("zmm", 64)] {
        if let Some(n) = name.strip_prefix(prefix) {
            return Some((format!("v{n}"), width));
        }
    }
    const LEGACY: [[&str; 4]; 8] = [
        ["al", "ax", "eax", "rax"],
        ["bl", "bx", "ebx", "rbx"],
        ["cl", "cx", "ecx", "rcx"],
        ["dl", "dx", "edx", "rdx"],
        ["sil", "si", "esi", "rsi"],
        ["dil", "di", "edi", "rdi"],
        ["bpl", "bp", "ebp", "rbp"],
        ["spl", "sp", "esp", "rsp"],
    ];
    for family in LEGACY {
        if let Some(i) = family.iter().position(|r| *r == name) {
            return Some((family[3].to_string(), 1 << i));
        }
    }
    let digits: String = name
        .chars()
        .skip(1)
        .take_while(char::is_ascii_digit)
        .collect();
    if name.starts_with('r') && !digits.is_empty() {
        let width = match &name[1 + digits.len()..] {
            "b" => 1,
            "w" => 2,
            "d" => 4,
            "" => 8,
            _ => return None,
        };
        return Some((format!("r{digits}"), width));
    }
    None
}

/// A memory operand `off(%base)` (no index register), or `sym(%rip)`.
#[derive(Debug, PartialEq)]
enum Memory {
    Based { offset: i64, base: String },
    Symbol(String),
}

fn memory(op: &str) -> Option<Memory> {
    let open = op.find('(')?;
    let inner = op[open + 1..].strip_suffix(')')?;
    if inner.contains(',') {
        return None;
    }
    let disp = &op[..open];
    if inner == "%rip" {
        return Some(Memory::Symbol(disp.to_string()));
    }
    let offset = if disp.is_empty() {
        0
    } else {
        disp.parse().ok()?
    };
    Some(Memory::Based {
        offset,
        base: register(inner)?.0,
    })
}

fn immediate(op: &str) -> Option<i64> {
    let v = op.strip_prefix('$')?;
    match v.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Operands split at the top-level commas (`8(%rsp,%rax,4)` is one operand).
fn operands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(current.trim().to_string());
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// The bytes of the data labels (`.LC5: .quad 4503668347895824`), little-endian.
fn data_labels(asm: &str) -> HashMap<String, Vec<u8>> {
    let mut labels = HashMap::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in asm.lines() {
        let line = line.trim();
        if let Some(label) = line.strip_suffix(':') {
            if let Some((name, bytes)) = current.take() {
                labels.insert(name, bytes);
            }
            current = Some((label.to_string(), Vec::new()));
            continue;
        }
        let Some((_, bytes)) = current.as_mut() else {
            continue;
        };
        let mut words = line.split_whitespace();
        let directive = words.next().unwrap_or_default();
        let width = match directive {
            ".byte" => 1,
            ".value" | ".short" | ".word" | ".2byte" => 2,
            ".long" | ".int" | ".4byte" => 4,
            ".quad" | ".8byte" => 8,
            ".zero" | ".skip" => {
                let n: usize = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                bytes.extend(std::iter::repeat_n(0, n));
                continue;
            }
            _ if directive.starts_with('.') => continue,
            _ => {
                // an instruction: this label is code, not data
                current = None;
                continue;
            }
        };
        for v in line[directive.len()..].split(',') {
            let v = v.trim();
            let value = match v.strip_prefix("0x") {
                Some(hex) => i128::from_str_radix(hex, 16),
                None => v.parse::<i128>(),
            };
            let Ok(value) = value else {
                // a relocation (.quad sym): not a constant
                bytes.extend(std::iter::repeat_n(0xAA, width));
                continue;
            };
            bytes.extend_from_slice(&value.to_le_bytes()[..width]);
        }
    }
    if let Some((name, bytes)) = current {
        labels.insert(name, bytes);
    }
    labels
}

/// What `ldtilecfg` loads at each place it occurs: the 64 bytes, or why they cannot be followed.
fn configurations_loaded(asm: &str) -> Vec<Result<Vec<Byte>, String>> {
    let data = data_labels(asm);
    let lines: Vec<&str> = asm.lines().collect();
    let mut results = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("ldtilecfg") {
            continue;
        }
        let operand = words.collect::<Vec<_>>().join("");
        // the straight-line code that leads to it: back to the nearest label
        let start = lines[..at]
            .iter()
            .rposition(|l| {
                let t = l.trim();
                t.ends_with(':') && !t.starts_with('#')
            })
            .map_or(0, |i| i + 1);
        results.push(follow(&lines[start..at], &operand, &data));
    }
    results
}

/// Runs the moves of `code` and returns the 64 bytes at `operand` when `ldtilecfg` reads them.
fn follow(
    code: &[&str],
    operand: &str,
    data: &HashMap<String, Vec<u8>>,
) -> Result<Vec<Byte>, String> {
    let target =
        memory(operand).ok_or_else(|| format!("ldtilecfg {operand}: not a plain address"))?;
    let (offset, base) = match target {
        Memory::Symbol(sym) => {
            let bytes = data
                .get(&sym)
                .ok_or_else(|| format!("ldtilecfg reads {sym}, which is not a constant here"))?;
            return Ok(known(bytes, 64));
        }
        Memory::Based { offset, base } => (offset, base),
    };
    // stores into the frame, as (address relative to the base's value at ldtilecfg, bytes)
    let mut regs: HashMap<String, Value> = HashMap::new();
    let mut stores: Vec<(i64, Vec<Byte>)> = Vec::new();
    // how far the base register has moved since the start (push/pop/add/sub), or None once
    // it was set to something we do not follow (stores before that are lost to us)
    let mut shift = 0i64;
    for raw in code {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() || line.starts_with('.') {
            continue;
        }
        let (mnemonic, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let ops = operands(rest);
        let dest = ops.last().map(String::as_str).unwrap_or_default();

        // the base register moving
        if base == "rsp" {
            match (mnemonic, ops.first().and_then(|o| immediate(o))) {
                ("pushq", _) => {
                    shift -= 8;
                    continue;
                }
                ("popq", _) => {
                    shift += 8;
                    continue;
                }
                ("subq", Some(n)) if dest == "%rsp" => {
                    shift -= n;
                    continue;
                }
                ("addq", Some(n)) if dest == "%rsp" => {
                    shift += n;
                    continue;
                }
                ("call" | "callq", _) => {}
                _ => {}
            }
        }
        if mnemonic.starts_with("call") {
            regs.clear();
            continue;
        }
        if register(dest).is_some_and(|(r, _)| r == base) {
            // the base is set anew: what was stored relative to its old value is out of reach
            stores.clear();
            shift = 0;
            continue;
        }

        // a store into the frame
        if let Some(Memory::Based {
            offset: at,
            base: b,
        }) = memory(dest)
        {
            if b == base {
                let value = stored_value(mnemonic, &ops, &regs);
                stores.push((at + shift, value));
            }
            continue;
        }

        // a register written
        let Some((reg, width)) = register(dest) else {
            continue;
        };
        let value = loaded_value(mnemonic, &ops, &regs, data, width);
        regs.insert(reg, value);
    }
    // the configuration's bytes, as the base stands at ldtilecfg
    let at = offset + shift;
    let mut config = vec![Byte::Unknown; 64];
    let mut written = [false; 64];
    for (start, bytes) in &stores {
        for (i, b) in bytes.iter().enumerate() {
            let addr = start + i as i64 - at;
            if (0..64).contains(&addr) {
                config[addr as usize] = *b;
                written[addr as usize] = true;
            }
        }
    }
    if written.iter().all(|w| !w) {
        return Err(format!(
            "no store to {operand} before ldtilecfg in the code that leads to it"
        ));
    }
    Ok(config)
}

/// The bytes a store writes: `movl $16, 8(%rsp)`, `vmovdqa %xmm0, 16(%rsp)`, `movq %rdx, ...`.
fn stored_value(mnemonic: &str, ops: &[String], regs: &HashMap<String, Value>) -> Vec<Byte> {
    let width = match mnemonic {
        "movb" => 1,
        "movw" => 2,
        "movl" | "vmovd" | "movd" | "vmovss" => 4,
        "movq" | "vmovq" | "vmovsd" => 8,
        _ => ops.first().and_then(|o| register(o)).map_or(64, |(_, w)| w),
    };
    let masked = ops.iter().any(|o| o.contains('{'));
    let Some(src) = ops.first() else {
        return vec![Byte::Unknown; width];
    };
    let plain_move = mnemonic.starts_with("mov") || mnemonic.starts_with("vmov");
    if masked || !plain_move || ops.len() != 2 {
        return vec![Byte::Unknown; width];
    }
    if let Some(v) = immediate(src) {
        return known(&v.to_le_bytes(), width);
    }
    match register(src) {
        Some((reg, _)) => regs
            .get(&reg)
            .map(|v| v[..width.min(v.len())].to_vec())
            .unwrap_or_else(|| vec![Byte::Unknown; width]),
        None => vec![Byte::Unknown; width],
    }
}

/// A register's new value after `mnemonic ops`: zeroing idioms, constants loaded or broadcast
/// from data labels, immediates and register copies; anything else makes it unknown.
fn loaded_value(
    mnemonic: &str,
    ops: &[String],
    regs: &HashMap<String, Value>,
    data: &HashMap<String, Vec<u8>>,
    width: usize,
) -> Value {
    let vector = ops
        .last()
        .is_some_and(|o| o.starts_with("%xmm") || o.starts_with("%ymm") || o.starts_with("%zmm"));
    let full = if vector { 64 } else { 8 };
    let unknown = vec![Byte::Unknown; full];
    if ops.iter().any(|o| o.contains('{')) {
        return unknown;
    }
    let is_xor = matches!(
        mnemonic,
        "vpxor"
            | "vpxord"
            | "vpxorq"
            | "vxorps"
            | "vxorpd"
            | "pxor"
            | "xorps"
            | "xorpd"
            | "xorl"
            | "xorq"
    );
    if is_xor {
        let same = ops.len() >= 2
            && ops
                .iter()
                .all(|o| register(o).map(|r| r.0) == register(&ops[0]).map(|r| r.0));
        return if same { known(&[], full) } else { unknown };
    }
    let source = |op: &str, n: usize| -> Option<Vec<Byte>> {
        if let Some(v) = immediate(op) {
            return Some(known(&v.to_le_bytes(), n));
        }
        if let Some(Memory::Symbol(sym)) = memory(op) {
            return data.get(&sym).map(|b| known(b, n));
        }
        let (reg, _) = register(op)?;
        let v = regs.get(&reg)?;
        Some(v[..n.min(v.len())].to_vec())
    };
    let Some(src) = ops.first() else {
        return unknown;
    };
    if ops.len() != 2 {
        return unknown;
    }
    // broadcasts: vpbroadcastq .LC3(%rip), %zmm0
    let element = match mnemonic {
        "vpbroadcastb" => Some(1),
        "vpbroadcastw" => Some(2),
        "vpbroadcastd" | "vbroadcastss" => Some(4),
        "vpbroadcastq" | "vbroadcastsd" => Some(8),
        "vbroadcasti32x4" | "vbroadcasti64x2" | "vbroadcasti128" => Some(16),
        "vbroadcasti32x8" | "vbroadcasti64x4" => Some(32),
        _ => None,
    };
    if let Some(e) = element {
        let Some(one) = source(src, e) else {
            return unknown;
        };
        let mut v: Vec<Byte> = one.iter().copied().cycle().take(width).collect();
        v.resize(full, Byte::Known(0));
        return v;
    }
    let n = match mnemonic {
        "movl" | "vmovd" | "movd" => 4,
        "movq" | "vmovq" | "movabsq" => 8,
        m if m.starts_with("vmov") || m.starts_with("mov") => width,
        _ => return unknown,
    };
    let Some(mut v) = source(src, n) else {
        return unknown;
    };
    // VEX/EVEX and 32/64-bit GPR writes clear the rest of the register
    v.resize(full, Byte::Known(0));
    if !vector && width < 4 {
        return unknown;
    }
    v
}

fn describe(config: &[Byte]) -> String {
    config
        .iter()
        .map(|b| match b {
            Byte::Known(v) => format!("{v}"),
            Byte::Unknown => "?".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn loads_the_right_configuration(asm: &str) -> Result<usize, String> {
    let expected = known(&expected_config(), 64);
    let results = configurations_loaded(asm);
    if results.is_empty() {
        return Err("no ldtilecfg in the assembly: the AMX kernels were not compiled".into());
    }
    for (i, r) in results.iter().enumerate() {
        let config = r
            .as_ref()
            .map_err(|e| format!("ldtilecfg #{}: {e}", i + 1))?;
        if *config != expected {
            return Err(format!(
                "ldtilecfg #{} loads [{}]\n  the source writes [{}]",
                i + 1,
                describe(config),
                describe(&expected)
            ));
        }
    }
    Ok(results.len())
}

#[test]
fn the_built_amx_code_loads_the_tile_configuration_it_writes() {
    let commands = build_commands();
    if commands.is_empty() {
        note(&format!(
            "skipped: the build compiled no {MMQ} (not an x86-64 build), so it has no AMX path"
        ));
        return;
    }
    let tree = PathBuf::from(llama_cpp_sys_2::PATCHED_TREE);
    for (dir, args) in &commands {
        let asm = compile_to_assembly(dir, args, &tree.join("ggml/src").join(MMQ));
        let (kind, major) = compiler(&args[0]);
        match loads_the_right_configuration(&asm) {
            Ok(n) => note(&format!(
                "{MMQ} as built ({kind} {major}), for an AMX CPU: {n} ldtilecfg, each loading \
                 the configuration the source writes"
            )),
            Err(e) => panic!("{MMQ}, compiled as the build does for an AMX CPU:\n{e}"),
        }
    }
}

/// The check above is only worth something if it fails on the bug: the unpatched file, under a
/// GCC whose `_tile_loadconfig` has the 8-byte input, must be caught.
#[test]
fn the_check_catches_the_unpatched_file() {
    let Some((dir, args)) = build_commands().into_iter().next() else {
        note("skipped the control: no x86-64 build");
        return;
    };
    let (kind, major) = compiler(&args[0]);
    let pristine = Path::new(env!("TURBOQUANT_PRISTINE_SOURCE"))
        .join("ggml/src")
        .join(MMQ);
    let asm = compile_to_assembly(&dir, &args, &pristine);
    let verdict = loads_the_right_configuration(&asm);
    if kind == "gcc" && major < 13 {
        let why = verdict.expect_err(
            "the unpatched mmq.cpp under GCC < 13 should load an incomplete tile configuration",
        );
        note(&format!(
            "control: the unpatched {MMQ} under {kind} {major} is caught: {}",
            why.lines().next().unwrap_or_default()
        ));
    } else {
        note(&format!(
            "control skipped: {kind} {major} compiles the unpatched file {}, so it cannot show \
             that the check fails on the bug",
            if verdict.is_ok() {
                "correctly"
            } else {
                "wrongly too"
            }
        ));
    }
}

#[test]
fn the_model_follows_the_moves_gcc_and_clang_emit() {
    let asm = "\
.LC1:
\t.quad\t4503668347895824
\t.text
f:
\tvpxor\t%xmm0, %xmm0, %xmm0
\tvmovdqa64\t%zmm0, 192(%rsp)
\tmovq\t.LC1(%rip), %rdx
\tmovb\t$1, 192(%rsp)
\tmovq\t%rdx, 240(%rsp)
\tmovl\t$4194368, 208(%rsp)
\tpushq\t%rbx
\tldtilecfg\t200(%rsp)
";
    let configs = configurations_loaded(asm);
    assert_eq!(configs.len(), 1);
    let c = configs[0].as_ref().unwrap();
    assert_eq!(c[0], Byte::Known(1), "palette");
    assert_eq!(c[16..20], known(&[64, 0, 64, 0], 4)[..], "colsb[0..2]");
    assert_eq!(c[48..56], known(&4503668347895824i64.to_le_bytes(), 8)[..]);
    assert_eq!(c[20], Byte::Known(0), "zeroed by the vector store");

    // a store of something not followed leaves the bytes unknown, and a configuration
    // that was never stored is an error
    let unknown =
        "f:\n\tvpaddd\t%zmm1, %zmm2, %zmm3\n\tvmovdqu64\t%zmm3, (%rsp)\n\tldtilecfg\t(%rsp)\n";
    assert!(configurations_loaded(unknown)[0]
        .as_ref()
        .unwrap()
        .contains(&Byte::Unknown));
    let none = "f:\n\tmovl\t$1, 64(%rsp)\n\tldtilecfg\t(%rsp)\n";
    assert!(configurations_loaded(none)[0].is_err());
}
