//! EnvelopedData with RSA-OAEP key transport, through OpenSSL's C API.
//!
//! The openssl crate (0.10.82) encrypts CMS only through `CMS_encrypt`, which always uses
//! RSA PKCS#1 v1.5 for key transport. OAEP must be set on the recipient info's key context
//! before the content is encrypted. So this module calls the C functions in the order that
//! `CMS_encrypt(3)` and `CMS_add1_recipient_cert(3)` document: create a partial structure,
//! add the recipient with `CMS_KEY_PARAM`, set the padding on its key context, then call
//! `CMS_final`. This is the only unsafe code in the crate.

use std::ffi::{c_int, c_uint};
use std::ptr;

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::CmsContentInfo;
use openssl::error::ErrorStack;
use openssl::symm::Cipher;
use openssl::x509::X509Ref;
use openssl_sys as ffi;

/// `CMS_RecipientInfo` is opaque: only pointers to it are passed around.
#[repr(C)]
struct CmsRecipientInfo {
    _private: [u8; 0],
}

// Declared here because openssl-sys 0.9.118 does not bind them. The signatures are those of
// OpenSSL 3.0's <openssl/cms.h>, and the symbols come from the libcrypto that openssl-sys
// links.
unsafe extern "C" {
    fn CMS_add1_recipient_cert(
        cms: *mut ffi::CMS_ContentInfo,
        recipient: *mut ffi::X509,
        flags: c_uint,
    ) -> *mut CmsRecipientInfo;
    fn CMS_RecipientInfo_get0_pkey_ctx(info: *mut CmsRecipientInfo) -> *mut ffi::EVP_PKEY_CTX;
    fn CMS_final(
        cms: *mut ffi::CMS_ContentInfo,
        data: *mut ffi::BIO,
        detached: *mut ffi::BIO,
        flags: c_uint,
    ) -> c_int;
}

/// Encrypts `data` to `recipient` with RSAES-OAEP (SHA-256, MGF1 with SHA-256) key transport
/// and `cipher` for the content, and returns the DER ContentInfo. An AEAD cipher such as
/// AES-256-GCM gives AuthEnvelopedData.
///
/// # Errors
///
/// OpenSSL's error stack when any step fails, for example a recipient key that is not RSA.
pub(crate) fn encrypt_rsa_oaep(
    recipient: &X509Ref,
    data: &[u8],
    cipher: Cipher,
) -> Result<Vec<u8>, ErrorStack> {
    let length = c_int::try_from(data.len()).map_err(|_| ErrorStack::get())?;
    let flags = ffi::CMS_BINARY | ffi::CMS_PARTIAL;

    // SAFETY: every pointer passed in is valid for the call: `recipient` and `cipher` are
    // borrowed from live Rust owners, `data` outlives the memory BIO that reads it, and
    // every pointer OpenSSL returns is checked for null before use. The ContentInfo is
    // owned by `content_info` as soon as it exists, so it is freed on every error path.
    // `CMS_add1_recipient_cert` takes its own reference to the certificate, and the key
    // context belongs to the recipient info, so neither is freed here.
    unsafe {
        let partial = ffi::CMS_encrypt(ptr::null_mut(), ptr::null_mut(), cipher.as_ptr(), flags);
        if partial.is_null() {
            return Err(ErrorStack::get());
        }
        let content_info = CmsContentInfo::from_ptr(partial);

        let info = CMS_add1_recipient_cert(
            content_info.as_ptr(),
            recipient.as_ptr(),
            ffi::CMS_KEY_PARAM,
        );
        if info.is_null() {
            return Err(ErrorStack::get());
        }
        let key_context = CMS_RecipientInfo_get0_pkey_ctx(info);
        if key_context.is_null()
            || ffi::EVP_PKEY_CTX_set_rsa_padding(key_context, ffi::RSA_PKCS1_OAEP_PADDING) <= 0
            || ffi::EVP_PKEY_CTX_set_rsa_oaep_md(key_context, ffi::EVP_sha256().cast_mut()) <= 0
            || ffi::EVP_PKEY_CTX_set_rsa_mgf1_md(key_context, ffi::EVP_sha256()) <= 0
        {
            return Err(ErrorStack::get());
        }

        let input = ffi::BIO_new_mem_buf(data.as_ptr().cast(), length);
        if input.is_null() {
            return Err(ErrorStack::get());
        }
        let finished = CMS_final(
            content_info.as_ptr(),
            input,
            ptr::null_mut(),
            ffi::CMS_BINARY,
        );
        ffi::BIO_free_all(input);
        if finished <= 0 {
            return Err(ErrorStack::get());
        }
        content_info.to_der()
    }
}
