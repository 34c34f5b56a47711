//! `clipctl`: the command-line entry point; all logic lives in `clip::cli`.
fn main() -> std::process::ExitCode {
    clip::cli::main()
}
