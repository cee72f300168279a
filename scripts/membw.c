// Read bandwidth of this machine with N threads: each thread sums its share of a 1 GiB buffer, 10 times; prints
// the best pass in GB/s. The decode speed limit of a model is (this figure) / (weight bytes read per token).
// Build and run: scripts/membw.sh [THREADS]
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

#define BYTES (1ull << 30)
static uint64_t *buf;
static int nthreads;
static pthread_barrier_t barrier;
static volatile uint64_t sink;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
  size_t id = (size_t)arg, n = BYTES / 8 / nthreads;
  const uint64_t *p = buf + id * n;
  for (int pass = 0; pass < 10; pass++) {
    pthread_barrier_wait(&barrier);
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i < n; i += 4) { a += p[i]; b += p[i + 1]; c += p[i + 2]; d += p[i + 3]; }
    sink += a + b + c + d;
    pthread_barrier_wait(&barrier);
  }
  return NULL;
}

int main(int argc, char **argv) {
  nthreads = argc > 1 ? atoi(argv[1]) : 1;
  if (nthreads < 1 || nthreads > 256) { fprintf(stderr, "threads must be 1..256\n"); return 1; }
  buf = aligned_alloc(64, BYTES);
  if (!buf) { fprintf(stderr, "cannot allocate 1 GiB\n"); return 1; }
  memset(buf, 1, BYTES);
  pthread_barrier_init(&barrier, NULL, nthreads + 1);
  pthread_t t[256];
  for (int i = 0; i < nthreads; i++) pthread_create(&t[i], NULL, reader, (void *)(size_t)i);
  double best = 1e9;
  for (int pass = 0; pass < 10; pass++) {
    pthread_barrier_wait(&barrier);
    double start = now();
    pthread_barrier_wait(&barrier);
    double s = now() - start;
    if (s < best) best = s;
  }
  for (int i = 0; i < nthreads; i++) pthread_join(t[i], NULL);
  printf("threads %d: read bandwidth %.1f GB/s\n", nthreads, BYTES / best / 1e9);
  return 0;
}
