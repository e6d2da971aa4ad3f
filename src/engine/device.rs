//! Turning `auto | cpu | cuda | cuda:N` into a libtorch device, with an error a user can act on.

use tch::Device;

use crate::config::DeviceChoice;

/// The model's own choice wins unless it is `auto`, in which case the server's `--device` decides.
pub fn resolve(model: DeviceChoice, server: DeviceChoice) -> Result<Device, String> {
    let choice = if model == DeviceChoice::Auto { server } else { model };
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda(index) => {
            let visible = tch::Cuda::device_count() as usize;
            if index < visible {
                Ok(Device::Cuda(index))
            } else {
                Err(format!("device cuda:{index} was asked for but libtorch sees {visible} CUDA device(s)"))
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
