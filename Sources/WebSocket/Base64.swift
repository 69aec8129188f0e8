/// Standard base64 with padding (RFC 4648 section 4): the handshake's key and accept values and the
/// payloads of `v4.base64.channel.k8s.io`. Strict: a character outside the alphabet, or padding
/// anywhere but at the end, is an error rather than something skipped.
public enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    /// The 6-bit value of each character, 0xFF for characters outside the alphabet.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in alphabet.enumerated() { table[Int(character)] = UInt8(index) }
        return table
    }()

    public static func encodedLength(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    /// Appends the encoding of `bytes` to `out`.
    public static func encode(_ bytes: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        out.reserveCapacity(out.count + encodedLength(bytes.count))
        var index = 0
        while index + 3 <= bytes.count {
            let value = Int(bytes[index]) << 16 | Int(bytes[index + 1]) << 8 | Int(bytes[index + 2])
            out.append(alphabet[value >> 18])
            out.append(alphabet[(value >> 12) & 63])
            out.append(alphabet[(value >> 6) & 63])
            out.append(alphabet[value & 63])
            index += 3
        }
        let left = bytes.count - index
        if left > 0 {
            let value = Int(bytes[index]) << 16 | (left == 2 ? Int(bytes[index + 1]) << 8 : 0)
            out.append(alphabet[value >> 18])
            out.append(alphabet[(value >> 12) & 63])
            out.append(left == 2 ? alphabet[(value >> 6) & 63] : UInt8(ascii: "="))
            out.append(UInt8(ascii: "="))
        }
    }

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        bytes.withUnsafeBytes { encode($0, into: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes `text` encodes, or nil when it is not strict base64.
    public static func decode(_ text: String) -> [UInt8]? {
        var decoder = Decoder()
        var out: [UInt8] = []
        let accepted = Array(text.utf8).withUnsafeBytes { decoder.decode($0, into: &out) }
        return accepted && decoder.finish() ? out : nil
    }

    /// Decodes base64 that arrives in pieces split anywhere, keeping at most three characters of an
    /// unfinished group between pieces.
    public struct Decoder: Sendable {
        private var group: UInt32 = 0
        /// Characters of the current group that carry bits, and the padding after them.
        private var filled = 0
        private var padding = 0
        /// A padded group has ended the text: nothing may follow it.
        private var ended = false
        private var failed = false

        public init() {}

        /// Appends what `characters` decode to `out`; false (and false from then on) on a character
        /// that is not base64 where it stands.
        public mutating func decode(_ characters: UnsafeRawBufferPointer, into out: inout [UInt8]) -> Bool {
            if failed { return false }
            for character in characters {
                if character == UInt8(ascii: "=") {
                    // "xx==" and "xxx=" are the only places padding may stand.
                    guard !ended, filled >= 2, filled + padding < 4 else { failed = true; return false }
                    padding += 1
                    if filled + padding == 4 {
                        flush(into: &out)
                        ended = true
                    }
                    continue
                }
                let value = Base64.values[Int(character)]
                guard value != 0xFF, !ended, padding == 0 else { failed = true; return false }
                group = group << 6 | UInt32(value)
                filled += 1
                if filled == 4 { flush(into: &out) }
            }
            return true
        }

        private mutating func flush(into out: inout [UInt8]) {
            let value = group << (6 * UInt32(4 - filled))
            out.append(UInt8(truncatingIfNeeded: value >> 16))
            if filled > 2 { out.append(UInt8(truncatingIfNeeded: value >> 8)) }
            if filled > 3 { out.append(UInt8(truncatingIfNeeded: value)) }
            group = 0
            filled = 0
            padding = 0
        }

        /// True when the text ended on a group boundary (nothing is left undecoded).
        public func finish() -> Bool { !failed && filled == 0 && padding == 0 }
    }
}
