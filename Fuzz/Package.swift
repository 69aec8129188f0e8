// swift-tools-version: 6.1
// libFuzzer targets, a package of their own (like Benchmarks/) so that the main package's build
// is not slowed. `make fuzz` builds and runs them; by hand, from the repository root:
//
//     swift build -c release --package-path Fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
//     Fuzz/.build/release/FuzzPortSpec -max_total_time=60 Fuzz/Corpus/FuzzPortSpec
//
// Each target exports LLVMFuzzerTestOneInput and starts libFuzzer from its @main through
// LLVMFuzzerRunDriver: SwiftPM renames an executable's `main` on Linux, so libFuzzer's own
// `main` cannot be the program's.
import PackageDescription

let targets = ["FuzzRequestHead", "FuzzResponseHead", "FuzzPortSpec", "FuzzForwardPath", "FuzzPodRegistry",
               "FuzzFrameTracker", "FuzzBase64URL", "FuzzTokenFile", "FuzzAccessRules",
               // The Kubernetes port-forward cores: SPDY/3.1 and WebSocket (RFC 6455, channel protocol).
               "FuzzSPDYSession", "FuzzSPDYHeaders", "FuzzWebSocketFrames", "FuzzChannelProtocol"]

let package = Package(
    name: "PortForwardFuzz",
    dependencies: [.package(name: "portforward", path: "..")],
    targets: [
        .target(name: "CFuzzerDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzerDriver"]),
        // What FuzzRequestHead and FuzzResponseHead check alike.
        .target(name: "HeadProperties", dependencies: ["FuzzSupport", .product(name: "PortForwardKit", package: "portforward")]),
    ] + targets.map { name in
        .executableTarget(name: name, dependencies: ["FuzzSupport", "HeadProperties",
                                                     .product(name: "PortForwardKit", package: "portforward")])
    }
)
