//! Test helpers shared by unit tests, integration tests, benches and fuzzing.
