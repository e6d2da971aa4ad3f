/* Stands in for libtorch.so when an AOTInductor package is loaded (src/engine/aoti.rs).
 *
 * A package's compiled model lists libtorch.so among the libraries it needs, because torch links it with that
 * library on the command line. The real libtorch.so defines nothing a model uses (every torch symbol is in
 * libtorch_cpu.so, which ember already maps), but it itself needs libtorch_cuda.so, whose CUDA libraries cost
 * a CPU-only process about 250 MiB. This library's only content is its soname: once loaded, the dynamic linker
 * takes it for libtorch.so. */
int ember_libtorch_stub;
