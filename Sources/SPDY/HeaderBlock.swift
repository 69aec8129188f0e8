/// A SPDY/3 header block (section 2.6.10): `u32 count`, then per entry `u32 length, name,
/// u32 length, value`. Names travel lowercase; a value may hold several values separated by NUL,
/// kept here as one string.
public struct HeaderBlock: Equatable, Sendable, ExpressibleByDictionaryLiteral {
    public struct Field: Equatable, Sendable {
        public var name: String
        public var value: String

        public init(name: String, value: String) {
            self.name = name
            self.value = value
        }
    }

    public var fields: [Field]

    public init(_ fields: [Field] = []) {
        self.fields = fields
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        fields = elements.map { Field(name: $0.0, value: $0.1) }
    }

    /// The first value of `name`, matched case-insensitively (Go clients canonicalize names,
    /// the wire carries them lowercase).
    public subscript(name: String) -> String? {
        let lowercased = name.lowercased()
        return fields.first { $0.name == lowercased }?.value
    }

    /// The block uncompressed, names lowercased.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        FrameEncoder.append(UInt32(fields.count), to: &bytes)
        for field in fields {
            let name = Array(field.name.lowercased().utf8)
            FrameEncoder.append(UInt32(name.count), to: &bytes)
            bytes += name
            let value = Array(field.value.utf8)
            FrameEncoder.append(UInt32(value.count), to: &bytes)
            bytes += value
        }
        return bytes
    }

    /// Decodes an uncompressed block; the bounds were already set by decompression.
    public init(decoding bytes: UnsafeRawBufferPointer) throws {
        func invalid(_ reason: String) -> SPDYError { .invalidHeaderBlock(reason) }
        guard bytes.count >= 4 else { throw invalid("shorter than its count") }
        let count = Int(bytes.bigEndianUInt32(at: 0))
        // Each entry takes at least 8 bytes: a count past that is a lie, checked before reserving.
        guard count <= (bytes.count - 4) / 8 else { throw invalid("count \(count) does not fit \(bytes.count) bytes") }
        var offset = 4
        func string() throws -> String {
            guard bytes.count - offset >= 4 else { throw invalid("truncated length") }
            let length = Int(bytes.bigEndianUInt32(at: offset))
            offset += 4
            guard length <= bytes.count - offset else { throw invalid("length \(length) past the end") }
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset ..< offset + length]), as: UTF8.self)
            offset += length
            return text
        }
        var fields: [Field] = []
        fields.reserveCapacity(count)
        for _ in 0..<count {
            let name = try string()
            guard !name.isEmpty else { throw invalid("empty name") }
            fields.append(Field(name: name.lowercased(), value: try string()))
        }
        guard offset == bytes.count else { throw invalid("\(bytes.count - offset) bytes after the last entry") }
        self.fields = fields
    }
}
