// Kernel tracer for the GPU machine, which has no Nsight profiler: a library the CUDA driver
// loads into any program named by CUDA_INJECTION64_PATH. It records every kernel the program runs
// (CUPTI activity records, which include the kernels of CUDA graphs, as ggml-cuda uses them) and
// writes one line per kernel to the file named by KERNEL_TRACE_OUT when the program exits:
//
//   start_ns <tab> end_ns <tab> grid x,y,z <tab> block x,y,z <tab> registers <tab> name
//
// summarize.py turns that into time per generated token, by kernel. Built by remote.sh:
//   g++ -shared -fPIC -O2 -DKERNEL_RECORD=CUpti_ActivityKernelN kernel_trace.cpp -lcupti
// where N is the newest kernel record version of the toolkit's cupti_activity.h.

#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#ifndef KERNEL_RECORD
#error "define KERNEL_RECORD as the toolkit's newest CUpti_ActivityKernel record type"
#endif

namespace {

struct kernel_event {
    uint64_t start;
    uint64_t end;
    uint32_t grid[3];
    uint32_t block[3];
    uint16_t registers;
    uint32_t name; // index into names
};

std::mutex                                mutex;
std::vector<kernel_event>                 events;
std::vector<std::string>                  names;
std::unordered_map<std::string, uint32_t> name_ids;

constexpr size_t buffer_bytes = 8u << 20;

void check(CUptiResult result, const char * what) {
    if (result != CUPTI_SUCCESS) {
        const char * message = nullptr;
        cuptiGetResultString(result, &message);
        fprintf(stderr, "kernel_trace: %s failed: %s\n", what, message ? message : "unknown error");
    }
}

std::string demangle(const char * mangled) {
    int    status = 0;
    char * plain  = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
    std::string name = status == 0 && plain ? plain : mangled;
    free(plain);
    return name;
}

void CUPTIAPI buffer_requested(uint8_t ** buffer, size_t * size, size_t * max_records) {
    *buffer      = (uint8_t *) aligned_alloc(ACTIVITY_RECORD_ALIGNMENT, buffer_bytes);
    *size        = *buffer ? buffer_bytes : 0;
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t * buffer, size_t, size_t valid_bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    CUpti_Activity * record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid_bytes, &record) == CUPTI_SUCCESS) {
        if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            continue;
        }
        const auto * k = (const KERNEL_RECORD *) record;
        const std::string name = demangle(k->name);
        auto it = name_ids.find(name);
        if (it == name_ids.end()) {
            it = name_ids.emplace(name, (uint32_t) names.size()).first;
            names.push_back(name);
        }
        events.push_back({k->start, k->end,
                          {(uint32_t) k->gridX, (uint32_t) k->gridY, (uint32_t) k->gridZ},
                          {(uint32_t) k->blockX, (uint32_t) k->blockY, (uint32_t) k->blockZ},
                          k->registersPerThread, it->second});
    }
    size_t dropped = 0;
    cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped);
    if (dropped) {
        fprintf(stderr, "kernel_trace: %zu records dropped\n", dropped);
    }
    free(buffer);
}

void write_trace() {
    check(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
    const char * path = getenv("KERNEL_TRACE_OUT");
    FILE * f = fopen(path ? path : "kernel-trace.tsv", "w");
    if (!f) {
        fprintf(stderr, "kernel_trace: cannot write %s\n", path ? path : "kernel-trace.tsv");
        return;
    }
    std::lock_guard<std::mutex> lock(mutex);
    for (const kernel_event & e : events) {
        fprintf(f, "%llu\t%llu\t%u,%u,%u\t%u,%u,%u\t%u\t%s\n", (unsigned long long) e.start,
                (unsigned long long) e.end, e.grid[0], e.grid[1], e.grid[2], e.block[0], e.block[1],
                e.block[2], (unsigned) e.registers, names[e.name].c_str());
    }
    fclose(f);
    fprintf(stderr, "kernel_trace: %zu kernels written\n", events.size());
}

} // namespace

// called by the CUDA driver when it loads this library (CUDA_INJECTION64_PATH)
extern "C" int InitializeInjection(void) {
    check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "cuptiActivityRegisterCallbacks");
    check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
    atexit(write_trace);
    return 1;
}
