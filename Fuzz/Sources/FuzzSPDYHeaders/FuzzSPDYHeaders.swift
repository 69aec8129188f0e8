import FuzzSupport
import SPDY

// SPDY/3 header blocks (zlib with the SPDY dictionary, one context per direction).
// Mode 0, arbitrary compressed input: a `HeaderDecompressor` with a limit the input picks, fed
// blocks the input cuts, never returns more than the limit, throws only `SPDYError`, and what it
// decodes writes out and decodes back to itself.
// Mode 1, round trips: header blocks built from the input, compressed one after another on one
// `HeaderCompressor` and inflated on one `HeaderDecompressor`, come back equal (names lowercased)
// while they fit the limit; one past it fails with `headerBlockTooLarge`, and never more.
//
// Input: [mode][limit, 2 bytes][...]. Mode 0: then blocks, each [length byte][length bytes].
// Mode 1: then fields, each [flags][name length][name][value length][value]; flags bit 0 ends
// the block after this field.

func decodesBack(_ block: HeaderBlock) {
    let encoded = block.encoded()
    do {
        let again = try encoded.withUnsafeBytes { try HeaderBlock(decoding: $0) }
        require(again == block, "\(block) wrote out and read back as \(again)")
    } catch {
        require(false, "\(block) wrote out and did not read back: \(error)")
    }
}

func arbitrary(_ input: inout FuzzInput, limit: Int) {
    let decompressor: HeaderDecompressor
    do { decompressor = try HeaderDecompressor(limit: limit) } catch { fatalError("\(error)") }
    while !input.isEmpty {
        let block = input.take(Int(input.byte()))
        do {
            let plain = try decompressor.inflate(block)
            require(plain.count <= limit, "\(block.count) bytes inflated to \(plain.count), the limit is \(limit)")
            if let decoded = try? plain.withUnsafeBytes({ try HeaderBlock(decoding: $0) }) {
                decodesBack(decoded)
                require(decoded.fields.allSatisfy { !$0.name.isEmpty && $0.name == $0.name.lowercased() },
                        "a decoded name is empty or not lowercase: \(decoded)")
            }
        } catch is SPDYError {
            // The context is broken after an error: the session ends the connection.
            return
        } catch {
            require(false, "inflate threw \(error), not a SPDYError")
        }
    }
}

func roundTrips(_ input: inout FuzzInput, limit: Int) {
    let compressor: HeaderCompressor
    let decompressor: HeaderDecompressor
    do {
        compressor = try HeaderCompressor()
        decompressor = try HeaderDecompressor(limit: limit)
    } catch { fatalError("\(error)") }
    var blocks: [HeaderBlock] = []
    var current = HeaderBlock()
    while !input.isEmpty {
        let flags = input.byte()
        let name = input.take(Int(input.byte())).text
        let value = input.take(Int(input.byte())).text
        if !name.isEmpty { current.fields.append(.init(name: name, value: value)) }
        if flags & 1 != 0 || input.isEmpty {
            blocks.append(current)
            current = HeaderBlock()
        }
    }
    for block in blocks {
        var compressed: [UInt8] = []
        do { try compressor.compress(block, appendingTo: &compressed) } catch {
            require(false, "compressing \(block) threw \(error)")
        }
        let plainSize = block.encoded().count
        do {
            let back = try compressed.withUnsafeBytes { try decompressor.decompress($0) }
            require(plainSize <= limit, "a block of \(plainSize) bytes decompressed under the limit \(limit)")
            let expected = HeaderBlock(block.fields.map { .init(name: $0.name.lowercased(), value: $0.value) })
            require(back == expected, "\(block) came back as \(back)")
        } catch SPDYError.headerBlockTooLarge(let reported) {
            require(plainSize > limit && reported == limit, "a block of \(plainSize) bytes refused as past the limit \(reported) (\(limit))")
            return
        } catch {
            require(false, "decompressing \(block) (\(plainSize) bytes, limit \(limit)) threw \(error)")
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let mode = input.byte()
    let limit = Int(input.byte()) << 8 | Int(input.byte())
    if mode & 1 == 0 {
        arbitrary(&input, limit: limit)
    } else {
        roundTrips(&input, limit: limit)
    }
    return 0
}

// MARK: Seeds

func seeds() -> [(name: String, bytes: [UInt8])] {
    let compressor = try! HeaderCompressor()
    let kubectl: [HeaderBlock] = [
        ["streamtype": "error", "port": "80", "requestid": "0"],
        ["streamtype": "data", "port": "80", "requestid": "0"],
        ["streamtype": "error", "port": "8080", "requestid": "1"],
    ]
    var compressedBlocks: [UInt8] = []
    for block in kubectl {
        var compressed: [UInt8] = []
        try! compressor.compress(block, appendingTo: &compressed)
        compressedBlocks += [UInt8(compressed.count)] + compressed
    }
    var fields: [UInt8] = []
    for block in kubectl {
        for (index, field) in block.fields.enumerated() {
            let name = Array(field.name.utf8), value = Array(field.value.utf8)
            fields += [index == block.fields.count - 1 ? 1 : 0, UInt8(name.count)] + name + [UInt8(value.count)] + value
        }
    }
    return [
        ("kubectl-blocks", [0, 0xff, 0xff] + compressedBlocks),
        ("kubectl-blocks-limit-60", [0, 0, 60] + compressedBlocks),
        ("kubectl-fields", [1, 0xff, 0xff] + fields),
        ("kubectl-fields-limit-70", [1, 0, 70] + fields),
    ]
}

@main enum Main {
    static func main() {
        writeSeedsIfAsked(seeds)
        FuzzerDriver.run(testOneInput)
    }
}
