//! Turning `auto | cpu | cuda | cuda:N` into a libtorch device, with an error a user can act on.

use tch::Device;

use super::cuda;
use crate::model_toml::DeviceChoice;

/// The model's own choice wins unless it is `auto`, in which case the server's `--device` decides.
pub fn resolve(model: DeviceChoice, server: DeviceChoice) -> Result<Device, String> {
    let choice = if model == DeviceChoice::Auto { server } else { model };
    match choice {
        DeviceChoice::Auto if cuda::auto_finds_gpu() => Ok(Device::Cuda(0)),
        DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(index) => {
            cuda::load().map_err(|e| format!("device cuda:{index} was asked for but CUDA cannot be loaded: {e}"))?;
            let visible = cuda::device_count();
            if index < visible {
                Ok(Device::Cuda(index))
            } else {
                Err(format!(
                    "device cuda:{index} was asked for but libtorch sees {visible} CUDA device(s) (no GPU, or no \
                     NVIDIA driver, is visible to this process; use --device cpu or auto)"
                ))
            }
        }
    }
}

/// The name used in logs, metrics labels and `GET /v1/models`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
