//! TLS keys: loading the listener certificate and creating development keys.
