//! The files a model version may hold, one per format: TorchScript (`model.pt`), ONNX (`model.onnx`, run by ONNX
//! Runtime) and an AOTInductor package (`model.pt2`, torch.export compiled ahead of time), and which of them
//! serves when model.toml says `format = "auto"`. A leaf: the model.toml schema, the repository, the engine and
//! the front ends all name formats the same way.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// One way a model version can be stored and run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelFormat {
    TorchScript,
    Onnx,
    Aoti,
}

impl ModelFormat {
    pub const ALL: [ModelFormat; 3] = [ModelFormat::TorchScript, ModelFormat::Onnx, ModelFormat::Aoti];

    /// The name in model.toml, `GET /v1/models` and the `format` label of `ember_model_info`.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "torchscript",
            ModelFormat::Onnx => "onnx",
            ModelFormat::Aoti => "aoti",
        }
    }

    /// The file of a version folder that holds the model in this format.
    pub fn file_name(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "model.pt",
            ModelFormat::Onnx => "model.onnx",
            ModelFormat::Aoti => "model.pt2",
        }
    }

    /// The Open Inference Protocol's `platform` of model metadata, in Triton's names for the same backends.
    pub fn platform(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "pytorch_libtorch",
            ModelFormat::Onnx => "onnxruntime_onnx",
            ModelFormat::Aoti => "torch_aoti",
        }
    }

    /// The formats whose file is in `version_dir`, in `ALL`'s order.
    pub fn present_in(version_dir: &Path) -> Vec<ModelFormat> {
        ModelFormat::ALL.into_iter().filter(|f| version_dir.join(f.file_name()).is_file()).collect()
    }

    /// The order `format = "auto"` tries the formats present, fastest first, on the CPU or on a GPU.
    ///
    /// Measured (bench/RESULTS.md, "Model formats"): on the CPU, ONNX Runtime runs MobileNetV2 1.6-1.9x faster per
    /// core than TorchScript frozen with optimize_for_inference, and an AOTInductor package is as fast as
    /// TorchScript, so TorchScript (verified against the eager model at export, and fine-tunable) comes before
    /// it. On a GPU this build's ONNX Runtime has no CUDA execution provider, and AOTInductor is PyTorch's own
    /// fast path there (compiled kernels, no interpreter).
    pub fn auto_order(on_gpu: bool) -> [ModelFormat; 3] {
        if on_gpu {
            [ModelFormat::Aoti, ModelFormat::TorchScript, ModelFormat::Onnx]
        } else {
            [ModelFormat::Onnx, ModelFormat::TorchScript, ModelFormat::Aoti]
        }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// model.toml's `format`: a format, or `auto` (the fastest one present for the model's device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FormatChoice {
    #[default]
    Auto,
    Only(ModelFormat),
}

impl fmt::Display for FormatChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatChoice::Auto => f.write_str("auto"),
            FormatChoice::Only(format) => format.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for FormatChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "auto" {
            return Ok(FormatChoice::Auto);
        }
        ModelFormat::ALL.into_iter().find(|f| f.name() == text).map(FormatChoice::Only).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown format `{text}`: expected auto, torchscript, onnx or aoti"))
        })
    }
}

impl FormatChoice {
    /// The format that serves a version holding `present`, or why none can. `usable` says whether a format present
    /// can run where the model runs (an AOTInductor package is compiled for one device): `auto` passes over one
    /// that cannot, a named format is refused with its reason.
    pub fn resolve(
        self,
        present: &[ModelFormat],
        on_gpu: bool,
        usable: impl Fn(ModelFormat) -> Result<(), String>,
    ) -> Result<ModelFormat, String> {
        let files = |formats: &[ModelFormat]| formats.iter().map(|f| f.file_name()).collect::<Vec<_>>().join(", ");
        match self {
            FormatChoice::Only(format) if present.contains(&format) => usable(format).map(|()| format),
            FormatChoice::Only(format) => Err(format!(
                "model.toml says format = \"{format}\" but the version holds no {} (it holds {})",
                format.file_name(),
                if present.is_empty() { "no model file".to_string() } else { files(present) }
            )),
            FormatChoice::Auto => {
                let mut passed = Vec::new();
                for format in ModelFormat::auto_order(on_gpu).into_iter().filter(|f| present.contains(f)) {
                    match usable(format) {
                        Ok(()) => return Ok(format),
                        Err(why) => passed.push(format!("{}: {why}", format.file_name())),
                    }
                }
                if present.is_empty() {
                    Err(format!("the version holds no model file ({})", files(&ModelFormat::ALL)))
                } else {
                    Err(format!("no model file of the version can serve here ({})", passed.join("; ")))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModelFormat::{Aoti, Onnx, TorchScript};

    #[test]
    fn auto_takes_the_fastest_usable_format_for_the_device() {
        let all = [TorchScript, Onnx, Aoti];
        let ok = |_| Ok(());
        assert_eq!(FormatChoice::Auto.resolve(&all, false, ok), Ok(Onnx));
        assert_eq!(FormatChoice::Auto.resolve(&[TorchScript, Aoti], false, ok), Ok(TorchScript));
        assert_eq!(FormatChoice::Auto.resolve(&all, true, ok), Ok(Aoti));
        let cpu_package = |f| if f == Aoti { Err("compiled for cpu".to_string()) } else { Ok(()) };
        assert_eq!(FormatChoice::Auto.resolve(&all, true, cpu_package), Ok(TorchScript));
        let err = FormatChoice::Auto.resolve(&[Aoti], true, cpu_package).unwrap_err();
        assert!(err.contains("model.pt2: compiled for cpu"), "{err}");
        let err = FormatChoice::Auto.resolve(&[], false, ok).unwrap_err();
        assert!(err.contains("no model file"), "{err}");
    }

    #[test]
    fn a_named_format_must_be_present_and_usable() {
        assert_eq!(FormatChoice::Only(TorchScript).resolve(&[TorchScript, Onnx], false, |_| Ok(())), Ok(TorchScript));
        let err = FormatChoice::Only(Onnx).resolve(&[TorchScript], false, |_| Ok(())).unwrap_err();
        assert!(err.contains("no model.onnx") && err.contains("holds model.pt"), "{err}");
        let err = FormatChoice::Only(Aoti).resolve(&[Aoti], true, |_| Err("compiled for cpu".into())).unwrap_err();
        assert_eq!(err, "compiled for cpu");
    }

    #[test]
    fn model_toml_names_formats_in_words() {
        #[derive(Deserialize)]
        struct T {
            format: FormatChoice,
        }
        let parse = |text: &str| toml::from_str::<T>(text).map(|t| t.format);
        assert_eq!(parse("format = \"onnx\"").unwrap(), FormatChoice::Only(Onnx));
        assert_eq!(parse("format = \"auto\"").unwrap(), FormatChoice::Auto);
        let err = parse("format = \"tflite\"").unwrap_err().to_string();
        assert!(err.contains("unknown format `tflite`"), "{err}");
    }
}
