// swift-tools-version:6.0
import PackageDescription

// Sura: LLM-enhanced text-to-image diffusion adapters, trained and served on a cluster.
// Dependency direction (DESIGN.md §2): Tensor ← Models ← Data ← Worker ← Coordinator ← executables;
// Collective sits beside Tensor and never imports math.

let v5: [SwiftSetting] = [.swiftLanguageMode(.v5)]
// The tensor kernels are compiled for x86-64-v3 (AVX2, FMA): elementwise loops vectorise 8 wide,
// about 2× the baseline build. scripts/setup refuses CPUs without AVX2 with a clear message.
#if arch(x86_64)
let kernelSettings: [SwiftSetting] = v5 + [.unsafeFlags(["-target-cpu", "haswell"])]
#else
let kernelSettings: [SwiftSetting] = v5
#endif

let package = Package(
    name: "Sura",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "sura", targets: ["sura"]),
        .executable(name: "train", targets: ["train"]),
        .library(name: "Tensor", targets: ["Tensor"]),
        .library(name: "Models", targets: ["Models"]),
        .library(name: "Collective", targets: ["Collective"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System libraries, found through pkg-config.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq",
                       providers: [.apt(["libzmq3-dev"])]),
        // MPI's communicators, datatypes and ops are C macros; this shim turns them into functions.
        .target(name: "CMPIShim", dependencies: ["CMPI"]),

        // Libraries.
        .target(name: "Tensor", dependencies: ["COpenBLAS", "CPNG"], swiftSettings: kernelSettings),
        .target(name: "Models", dependencies: ["Tensor", "COpenBLAS"], swiftSettings: kernelSettings),
        .target(name: "Data", dependencies: ["Models"], swiftSettings: v5),
        .target(name: "Collective", dependencies: ["CMPIShim"], swiftSettings: v5),
        .target(name: "Worker", dependencies: ["Data", "Collective"], swiftSettings: v5),
        .target(name: "Coordinator", dependencies: ["Worker", "CZeroMQ", "Yams"], swiftSettings: v5),

        // Executables.
        .executableTarget(name: "train", dependencies: [
            "Coordinator", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: v5),
        .executableTarget(name: "sura", dependencies: [
            "Coordinator", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: v5),

        // Tests: one target per library, and what several of them share (built executables,
        // child processes, in-process rank groups).
        .target(name: "SuraTestSupport", dependencies: ["Collective"], path: "Tests/SuraTestSupport", swiftSettings: v5),
        .testTarget(name: "TensorTests", dependencies: ["Tensor"],
                    resources: [.copy("Fixtures")], swiftSettings: v5),
        .testTarget(name: "ModelsTests", dependencies: ["Models", "SuraTestSupport"],
                    resources: [.copy("Fixtures")], swiftSettings: v5),
        .testTarget(name: "CollectiveTests", dependencies: ["Collective", "SuraTestSupport"], swiftSettings: v5),
        .testTarget(name: "DataTests", dependencies: ["Data"],
                    resources: [.copy("Fixtures")], swiftSettings: v5),
        .testTarget(name: "CoordinatorTests", dependencies: ["Coordinator", "Yams", "SuraTestSupport"],
                    resources: [.copy("Fixtures")], swiftSettings: v5),
        .testTarget(name: "WorkerTests", dependencies: ["Worker", "SuraTestSupport"], swiftSettings: v5),
    ]
)
