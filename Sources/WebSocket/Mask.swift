/// Client-to-server payloads are XORed with a 4-byte key (RFC 6455 section 5.3). The key's phase
/// carries over between pieces, so a payload can be unmasked in place piece by piece as it arrives
/// in whatever buffer the connection read it into.
public struct Mask: Sendable, Equatable {
    public let key: UInt32
    /// Payload bytes already unmasked, modulo 4: where in the key the next byte starts.
    public private(set) var phase = 0

    public init(key: UInt32) { self.key = key }

    /// XORs `bytes` in place (masking and unmasking are the same operation) and advances the phase.
    public mutating func apply(_ bytes: UnsafeMutableRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        let count = bytes.count
        var keyBytes: (UInt8, UInt8, UInt8, UInt8) = (
            UInt8(truncatingIfNeeded: key >> 24), UInt8(truncatingIfNeeded: key >> 16),
            UInt8(truncatingIfNeeded: key >> 8), UInt8(truncatingIfNeeded: key))
        // Eight key bytes in memory order starting at the phase: XORing a word at a time keeps the
        // phase, since 8 is a multiple of 4.
        var pattern: UInt64 = 0
        withUnsafeBytes(of: &keyBytes) { key in
            withUnsafeMutableBytes(of: &pattern) { word in
                for index in 0..<8 { word[index] = key[(phase + index) & 3] }
            }
        }
        var index = 0
        while index + 8 <= count {
            let word = base.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            base.storeBytes(of: word ^ pattern, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        withUnsafeBytes(of: &keyBytes) { key in
            while index < count {
                bytes[index] ^= key[(phase + index) & 3]
                index += 1
            }
        }
        phase = (phase + count) & 3
    }
}
