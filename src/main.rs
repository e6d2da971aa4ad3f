//! The `ember` command line: serve | train | eval | info | openapi.

use clap::{CommandFactory, Parser, Subcommand};

use ember::flags::{RepoArgs, ServeConfig};
use ember::server::Server;
use ember::shutdown::shutdown_signal;

#[derive(Parser)]
#[command(name = "ember", version, about = "Serve TorchScript models over HTTP (REST and KServe v2)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model of the repository over HTTP.
    Serve(ServeConfig),
    /// Fine-tune a model of the repository on your data and publish the result as a new version.
    Train(ember::train::cli::TrainArgs),
    /// Measure a model version on a dataset (accuracy and loss, or loss per byte for text generation).
    Eval(ember::train::cli::EvalArgs),
    /// Print the libtorch version, the devices, the thread settings and the models found.
    Info(RepoArgs),
    /// Print the OpenAPI spec of the HTTP API.
    Openapi,
    /// Print the README's configuration reference (Markdown) from these very flags (`make docs`).
    #[command(hide = true)]
    ConfigReference {
        /// Rewrite the generated block of this README instead of printing.
        #[arg(long)]
        readme: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    ember::malloc_arenas::cap();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(config) => serve(config),
        Command::Train(args) => ember::train::cli::run_train(args),
        Command::Eval(args) => ember::train::cli::run_eval(args),
        Command::Info(repo) => {
            print!("{}", ember::info::report(&repo.model_repo));
            Ok(())
        }
        Command::Openapi => {
            print!("{}", ember::http::OPENAPI_YAML);
            Ok(())
        }
        Command::ConfigReference { readme } => config_reference(readme),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let telemetry = ember::telemetry::init(config.log_format, config.otlp_endpoint.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = runtime.block_on(async {
        let server = Server::bind(&config).await?;
        server.serve(shutdown_signal()).await
    });
    // The spans of the last requests, before the process ends.
    telemetry.shutdown();
    served
}

fn config_reference(readme: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let reference = ember::reference::markdown(&Cli::command());
    let Some(path) = readme else {
        print!("{reference}");
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)?;
    let updated = ember::reference::replace_block(&text, &reference).ok_or_else(|| {
        anyhow::anyhow!(
            "{} lacks the markers {} and {}",
            path.display(),
            ember::reference::BEGIN,
            ember::reference::END
        )
    })?;
    std::fs::write(&path, updated)?;
    Ok(())
}
