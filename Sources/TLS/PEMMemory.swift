import CSSL

/// PEM certificates and keys read from memory (a kubeconfig's `-data` fields, an exec plugin's
/// answer) through OpenSSL memory BIOs: secrets are never written to a file.
enum PEMMemory {
    private static func withBIO<T>(_ bytes: [UInt8], _ body: (OpaquePointer) throws -> T) throws -> T {
        try bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { throw TLSError.openSSL("BIO_new_mem_buf") }
            defer { BIO_free(bio) }
            return try body(bio)
        }
    }

    /// Every certificate in `bytes`, in order.
    private static func certificates(_ bytes: [UInt8]) throws -> [OpaquePointer] {
        try withBIO(bytes) { bio in
            var found: [OpaquePointer] = []
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) { found.append(certificate) }
            ERR_clear_error() // the end of the data reads as "no start line"
            return found
        }
    }

    /// `certificate-authority-data`: the CAs the server's certificate must chain to (instead of
    /// the system's).
    static func addAuthorities(_ bytes: [UInt8], to context: OpaquePointer) throws {
        let found = try certificates(bytes)
        guard !found.isEmpty else { throw TLSError("certificate-authority-data holds no PEM certificate") }
        let store = SSL_CTX_get_cert_store(context)
        for certificate in found {
            defer { X509_free(certificate) }
            guard X509_STORE_add_cert(store, certificate) == 1 else { throw TLSError.openSSL("cannot use certificate-authority-data") }
        }
    }

    /// `client-certificate-data` (leaf first, then intermediates) and `client-key-data`.
    static func useCertificateChain(_ certificate: [UInt8], key: [UInt8], in context: OpaquePointer) throws {
        let chain = try certificates(certificate)
        guard let leaf = chain.first else { throw TLSError("client-certificate-data holds no PEM certificate") }
        defer { X509_free(leaf) }
        guard SSL_CTX_use_certificate(context, leaf) == 1 else { throw TLSError.openSSL("cannot use client-certificate-data") }
        for intermediate in chain.dropFirst() {
            // The context owns it once added.
            guard pf_ssl_ctx_add_extra_chain_cert(context, intermediate) == 1 else {
                X509_free(intermediate)
                throw TLSError.openSSL("cannot use client-certificate-data")
            }
        }
        let privateKey = try withBIO(key) { bio in PEM_read_bio_PrivateKey(bio, nil, nil, nil) }
        guard let privateKey else { throw TLSError.openSSL("client-key-data holds no PEM private key") }
        defer { EVP_PKEY_free(privateKey) }
        guard SSL_CTX_use_PrivateKey(context, privateKey) == 1 else { throw TLSError.openSSL("cannot use client-key-data") }
        guard SSL_CTX_check_private_key(context) == 1 else { throw TLSError.openSSL("client-key-data does not match client-certificate-data") }
    }
}
