//! The `zamba-run` command line: see `zamba-run --help` and README.md.

fn main() -> std::process::ExitCode {
    zamba::cli::main()
}
