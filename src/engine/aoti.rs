//! AOTInductor packages (`model.pt2`): a model exported with torch.export and compiled ahead of time into native
//! code for one device, run through libtorch's AOTIModelPackageLoader (csrc/aoti_package.cpp).
//!
//! A package is a zip archive that the loader unpacks into a temporary folder and whose shared library it then
//! opens: serving one runs the code inside it, so a package is as trusted as a binary (README, "Security").
//! Before the loader sees it, ember reads the archive's directory itself and refuses a file that is not a zip,
//! an entry that would land outside the folder it is unpacked into (an absolute path, a `..`, a symlink), a
//! package without a model, a model compiled for another device, and one compiled for CPU instructions this
//! machine lacks (which would crash the process at its first request, not fail its load).

use std::ffi::{c_char, c_int, c_void, CString};
use std::io::Read;
use std::path::Path;
use std::ptr::NonNull;

use tch::{Device, Tensor};

extern "C" {
    fn ember_aoti_load(path: *const c_char, device: c_int, num_runners: usize, error: *mut *mut c_char) -> *mut c_void;
    fn ember_aoti_run(
        loader: *mut c_void,
        inputs: *const *mut c_void,
        n_inputs: usize,
        outputs: *mut *mut c_void,
        max_outputs: usize,
        error: *mut *mut c_char,
    ) -> i64;
    fn ember_aoti_free(loader: *mut c_void);
}

/// The model inside a package that the loader runs (torch names it `model` unless told otherwise).
const MODEL_NAME: &str = "model";
/// Largest metadata file read (they are a few hundred bytes).
const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// What a package says of itself (its `*_metadata.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// `cpu` or `cuda`.
    pub device: String,
    /// The CPU instruction sets its code was compiled for (`AVX512 AVX512_VNNI`), empty for a GPU package.
    pub cpu_isa: Vec<String>,
}

/// Reads `path`'s archive directory and metadata, refusing what could not be unpacked safely or has no model.
pub fn inspect(path: &Path) -> Result<PackageInfo, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("{} is not an AOTInductor package: it is not a zip archive ({e})", path.display()))?;
    let mut metadata = None;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(|e| format!("{}: entry {index}: {e}", path.display()))?;
        let name = entry.name().to_string();
        if entry.enclosed_name().is_none() || entry.is_symlink() {
            return Err(format!(
                "{}: refused before unpacking: its entry `{name}` would land outside the folder it is unpacked into",
                path.display()
            ));
        }
        let in_model = name.split('/').skip(1).take(3).eq(["data", "aotinductor", MODEL_NAME]);
        if in_model && name.ends_with("_metadata.json") && metadata.is_none() {
            metadata = Some(index);
        }
    }
    let Some(index) = metadata else {
        return Err(format!(
            "{} holds no AOTInductor model `{MODEL_NAME}` (no data/aotinductor/{MODEL_NAME}/*_metadata.json)",
            path.display()
        ));
    };
    let mut text = String::new();
    let entry = archive.by_index(index).map_err(|e| format!("{}: {e}", path.display()))?;
    entry
        .take(MAX_METADATA_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: cannot read its metadata: {e}", path.display()))?;
    let values: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: its metadata is not JSON: {e}", path.display()))?;
    let field = |key: &str| values.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let device = field("AOTI_DEVICE_KEY");
    if device.is_empty() {
        return Err(format!("{}: its metadata names no device (AOTI_DEVICE_KEY)", path.display()));
    }
    let cpu_isa = field("AOTI_CPU_ISA").split_whitespace().map(str::to_string).collect();
    Ok(PackageInfo { device, cpu_isa })
}

impl PackageInfo {
    /// Whether this package's code can run on `device` of this machine; the error says why not.
    pub fn runs_on(&self, device: Device, path: &Path) -> Result<(), String> {
        let wanted = if device == Device::Cpu { "cpu" } else { "cuda" };
        if self.device != wanted {
            return Err(format!(
                "{} is compiled for {} and this model runs on {} (AOTInductor packages are device-specific: \
                 compile one for {wanted}, or serve another format)",
                path.display(),
                self.device,
                super::device::name(device)
            ));
        }
        if device == Device::Cpu {
            let flags = cpu_flags();
            let missing: Vec<&String> =
                self.cpu_isa.iter().filter(|isa| !flags.contains(&isa.to_lowercase())).collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{} is compiled for CPU instructions this machine lacks ({}): running it would crash; compile \
                     it on a machine like this one",
                    path.display(),
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The CPU's feature flags as /proc/cpuinfo lists them (`avx512f`, `avx512_vnni`, `amx_tile`), with the names
/// torch's ISA levels use for those that differ (`AVX512` is avx512f's level); read once.
fn cpu_flags() -> &'static [String] {
    static FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(read_cpu_flags)
}

fn read_cpu_flags() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut flags: Vec<String> = text
        .lines()
        .find_map(|line| line.strip_prefix("flags").and_then(|rest| rest.split_once(':')).map(|(_, f)| f))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if flags.iter().any(|f| f == "avx512f") {
        flags.push("avx512".into());
    }
    flags
}

/// csrc/libtorch_stub.c, built by build.rs: a library whose only content is the soname libtorch.so.
static LIBTORCH_STUB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libtorch_stub.so"));

/// Makes the dynamic linker find `libtorch.so`, which every package's model lists among its libraries, without
/// mapping the real one and the CUDA libraries it pulls in (csrc/libtorch_stub.c says why): the stub is written
/// to an anonymous in-memory file and opened from there, once per process.
fn provide_libtorch_soname() -> Result<(), String> {
    static PROVIDED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROVIDED
        .get_or_init(|| {
            use std::io::Write;
            use std::os::fd::{AsRawFd, FromRawFd};
            // SAFETY: memfd_create returns a new descriptor or -1; a valid one is owned by the File from here.
            let fd = unsafe { libc::memfd_create(c"ember-libtorch-stub".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
            }
            let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
            file.write_all(LIBTORCH_STUB).map_err(|e| format!("writing the libtorch.so stub: {e}"))?;
            let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
            // SAFETY: a valid path; the library has no initialisers; the handle stays open for the process.
            let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                return Err(format!("cannot open the libtorch.so stub: {}", super::cuda::dl_error()));
            }
            Ok(())
        })
        .clone()
}

/// A loaded package, shared by a pool's workers: it holds `num_runners` model instances and each call takes a
/// free one.
pub struct AotiPackage {
    raw: NonNull<c_void>,
}

// SAFETY: the loader may move between threads and its `run` may be called from several at once (it hands each
// call its own model instance, waiting for one when all are busy); nothing else is called after loading.
unsafe impl Send for AotiPackage {}
unsafe impl Sync for AotiPackage {}

impl AotiPackage {
    /// Checks and loads `path` for `device`, with `runners` model instances (one per worker that calls it).
    pub fn load(path: &Path, device: Device, runners: usize) -> Result<AotiPackage, String> {
        inspect(path)?.runs_on(device, path)?;
        provide_libtorch_soname().map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let (c_path, device_index) = (super::module::shim_path(path)?, super::module::shim_device(device)?);
        // SAFETY: c_path outlives the call; the shim returns a new loader or null with a message.
        super::module::checked(
            |error| unsafe { ember_aoti_load(c_path.as_ptr(), device_index, runners.max(1), error) },
            |raw| !raw.is_null(),
        )
        .map(|raw| AotiPackage { raw: NonNull::new(raw).expect("checked for null") })
        .map_err(|e| format!("cannot load {}: {}", path.display(), super::fault::torch_error_summary(&e)))
    }

    pub fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, String> {
        // SAFETY: the loader lives for &self; the shim reads the inputs and writes new tensors it hands over.
        super::module::call_returning_tensors(inputs, |inputs, n, outputs, max, error| unsafe {
            ember_aoti_run(self.raw.as_ptr(), inputs, n, outputs, max, error)
        })
    }
}

impl Drop for AotiPackage {
    fn drop(&mut self) {
        // SAFETY: raw came from ember_aoti_load and is freed exactly once.
        unsafe { ember_aoti_free(self.raw.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn package(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = zip::ZipWriter::new(file.reopen().unwrap());
        for (name, bytes) in entries {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(bytes).unwrap();
        }
        writer.finish().unwrap();
        file
    }

    const CPU_METADATA: &[u8] = br#"{"AOTI_DEVICE_KEY": "cpu", "AOTI_CPU_ISA": "AVX2"}"#;

    #[test]
    fn a_package_says_its_device_and_instructions() {
        let file = package(&[("model/data/aotinductor/model/abc.wrapper_metadata.json", CPU_METADATA)]);
        let info = inspect(file.path()).unwrap();
        assert_eq!(info, PackageInfo { device: "cpu".into(), cpu_isa: vec!["AVX2".into()] });
        let err = info.runs_on(Device::Cuda(0), file.path()).unwrap_err();
        assert!(err.contains("compiled for cpu") && err.contains("runs on cuda:0"), "{err}");
        let exotic = PackageInfo { device: "cpu".into(), cpu_isa: vec!["NO_SUCH_ISA".into()] };
        let err = exotic.runs_on(Device::Cpu, file.path()).unwrap_err();
        assert!(err.contains("lacks (NO_SUCH_ISA)"), "{err}");
    }

    #[test]
    fn entries_that_would_land_outside_are_refused_before_anything_is_unpacked() {
        for name in ["../evil.so", "model/../../evil.so", "/tmp/evil.so"] {
            let file = package(&[(name, b"x"), ("model/data/aotinductor/model/a_metadata.json", CPU_METADATA)]);
            let err = inspect(file.path()).unwrap_err();
            assert!(err.contains("refused before unpacking") && err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_package_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"TorchScript? no, junk").unwrap();
        assert!(inspect(file.path()).unwrap_err().contains("not a zip archive"));
        let file = package(&[("model/data/aotinductor/other/a_metadata.json", CPU_METADATA)]);
        assert!(inspect(file.path()).unwrap_err().contains("holds no AOTInductor model `model`"));
    }
}
