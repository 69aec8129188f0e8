// swift-tools-version: 6.1
// Micro benchmarks with ordo-one package-benchmark, a package of their own so that the main
// package's `swift build` never pulls package-benchmark in. Run from this directory:
//
//     swift package benchmark                       # all of them
//     swift package benchmark --filter "Reactor.*"  # some
//
// (`traits: ["MallocInterposer"]` gives the malloc counts on Linux with Swift 6.3.)
import PackageDescription

let package = Package(
    name: "PortForwardBenchmarks",
    platforms: [.macOS(.v13)],
    dependencies: [
        .package(name: "portforward", path: ".."),
        .package(url: "https://github.com/ordo-one/package-benchmark", from: "1.0.0", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "PortForwardBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "package-benchmark"),
                .product(name: "PortForwardKit", package: "portforward"),
            ],
            path: "Benchmarks/PortForwardBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v5)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "package-benchmark")]
        ),
    ]
)
