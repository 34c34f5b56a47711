//! TODO(cache): module being written.
