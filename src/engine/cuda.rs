//! libtorch's CUDA half, loaded only when a model will run on a GPU.
//!
//! ember is not linked against libtorch_cuda.so (build.rs): that library and the CUDA libraries it pulls in
//! (cuBLAS, cuDNN, NCCL, ...) cost about 250 MiB of resident memory even when every model runs on the CPU.
//! Instead it is opened here with `RTLD_GLOBAL`, whose static initialisers register CUDA with libtorch, when
//! `--device` or a model asks for CUDA, or when `auto` finds a GPU through the NVIDIA driver.
//!
//! libtorch decides once per process whether CUDA exists (the first call that asks caches the answer), so this
//! happens before any model is loaded: `ember serve` calls `prepare` for every model of the repository, and
//! `device::resolve` (which `ember train` and `ember eval` go through first) loads it on demand.

use std::ffi::{c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use crate::model_toml::DeviceChoice;

static TORCH_CUDA: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Opens libtorch_cuda, before any model loads, if the server's device or one of the models' devices may be
/// CUDA: an explicit `cuda` always, `auto` when the NVIDIA driver sees a GPU.
pub fn prepare(server: DeviceChoice, models: impl IntoIterator<Item = DeviceChoice>) {
    let choices: Vec<DeviceChoice> =
        models.into_iter().map(|model| if model == DeviceChoice::Auto { server } else { model }).collect();
    if choices.iter().any(|choice| matches!(choice, DeviceChoice::Cuda(_))) {
        if let Err(e) = load() {
            tracing::warn!(error = %e, "a model asks for CUDA but libtorch_cuda cannot be loaded");
        }
    }
    if choices.contains(&DeviceChoice::Auto) {
        auto_finds_gpu();
    }
}

/// Whether `auto` means CUDA in this process: the driver sees a GPU, libtorch_cuda loads and libtorch sees a
/// device. Decided once.
pub fn auto_finds_gpu() -> bool {
    static AUTO: OnceLock<bool> = OnceLock::new();
    *AUTO.get_or_init(|| {
        let found = driver_sees_gpu() && load().is_ok() && device_count() > 0;
        if !found && loaded_from().is_some() {
            tracing::warn!("the NVIDIA driver sees a GPU but libtorch does not: `auto` models run on the CPU");
        }
        found
    })
}

/// libtorch_cuda, loaded once; the error says why it cannot be.
pub fn load() -> Result<(), String> {
    TORCH_CUDA.get_or_init(open_torch_cuda).as_ref().map(|_| ()).map_err(Clone::clone)
}

/// Where libtorch_cuda was loaded from, if it was.
pub fn loaded_from() -> Option<PathBuf> {
    TORCH_CUDA.get().and_then(|result| result.as_ref().ok().cloned())
}

/// Devices libtorch sees: 0 until libtorch_cuda is loaded (asking before would also make libtorch decide for
/// good that there is no CUDA).
pub fn device_count() -> usize {
    if loaded_from().is_some() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

fn open_torch_cuda() -> Result<PathBuf, String> {
    // Beside the libtorch_cpu this process mapped (the venv, a dist folder's lib/, LD_LIBRARY_PATH's choice).
    let path = libtorch_dir().map(|dir| dir.join("libtorch_cuda.so")).unwrap_or_else(|| "libtorch_cuda.so".into());
    dlopen(&path, libc::RTLD_NOW | libc::RTLD_GLOBAL)?;
    tracing::info!(library = %path.display(), "libtorch_cuda loaded");
    Ok(path)
}

fn dlopen(path: &std::path::Path, flags: c_int) -> Result<*mut c_void, String> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(|_| "the path holds a NUL byte".to_string())?;
    // SAFETY: name is a valid C string for the call; the handle is never closed (the library stays loaded).
    let handle = unsafe { libc::dlopen(name.as_ptr(), flags) };
    if handle.is_null() {
        Err(last_dl_error(path))
    } else {
        Ok(handle)
    }
}

fn last_dl_error(path: &std::path::Path) -> String {
    let message = dl_error();
    if message.is_empty() {
        format!("cannot load {}", path.display())
    } else {
        message
    }
}

/// The dynamic linker's last error on this thread, or "".
pub(super) fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl call on this thread.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned()
    }
}

/// Whether the NVIDIA driver is installed and sees at least one GPU (CUDA_VISIBLE_DEVICES applies), asked
/// through the driver's own libcuda.so.1 without loading libtorch_cuda.
fn driver_sees_gpu() -> bool {
    type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
    let Ok(driver) = dlopen(std::path::Path::new("libcuda.so.1"), libc::RTLD_NOW | libc::RTLD_LOCAL) else {
        return false;
    };
    // SAFETY: the symbols are looked up in the driver library just opened and have these C signatures
    // (cuda.h); a missing symbol is a null pointer, checked before use.
    unsafe {
        let init = libc::dlsym(driver, c"cuInit".as_ptr());
        let count = libc::dlsym(driver, c"cuDeviceGetCount".as_ptr());
        if init.is_null() || count.is_null() {
            return false;
        }
        let init: CuInit = std::mem::transmute(init);
        let count_devices: CuDeviceGetCount = std::mem::transmute(count);
        let mut devices: c_int = 0;
        init(0) == 0 && count_devices(&mut devices) == 0 && devices > 0
    }
}

/// The folder of the libtorch_cpu.so this process mapped, read from /proc/self/maps.
pub fn libtorch_dir() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| std::path::Path::new(path).parent().map(PathBuf::from))
}
