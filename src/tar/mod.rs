//! TODO(tar): module being written.
