/* The Python binding of the CD-1 kernel: the extension deepbof_tf.native._cd1.
 *
 * One CD-1 epoch of the Gaussian–binary sparse RBM on x86-64 CPUs (docs/model.md, the
 * sparse RBM; docs/native-kernel.md). The kernel's parts, one concern per file:
 *
 *   cd1_random.c        Philox4x32-10 and TF's stateless uniform stream (scalar)
 *   cd1_random_simd.h   the same stream, one vector of blocks at a time
 *   cd1_math_simd.h     σ with the sampling of hidden states, and the weight update
 *   cd1_simd.h          the vector width those two templates are written against
 *   cd1_avx2.c          ... compiled for AVX2/FMA (8 lanes)
 *   cd1_avx512.c        ... compiled for AVX-512F (16 lanes)
 *   cd1_gemm.c          packing and the tile kernels (6×16 AVX2, 10×32 AVX-512)
 *   cd1_threads.c       the barrier and the start gate of the epoch's threads
 *   cd1_epoch.c         the epoch driver
 *   cd1_isa.c           the run-time choice of the path
 *
 * Both paths compute every float with the same operations in the same order, so they
 * give bit-identical results (tested). The module builds everywhere but reports
 * supported() = False on CPUs without AVX2+FMA (the Python side then uses TF).
 * How it is built: build.py here (setup.py takes its source list and flags from there).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cd1_common.h"
#include "cd1_epoch.h"
#include "cd1_isa.h"
#include "cd1_math.h"
#include "cd1_random.h"

/* The code path of the next epochs (cd1_select_isa), as DEEPBOF_CD1_ISA asks: auto
 * (AVX-512 where the CPU has it), avx2 or avx512 (tests run both; results are equal).
 * Returns the name of the path, or NULL with a Python error for a bad request. */
static const char *select_isa(void) {
  const char *wanted = getenv("DEEPBOF_CD1_ISA");
  cd1_isa_status status;
  const char *name = cd1_select_isa(wanted, &status);
  if (status == CD1_ISA_BAD_NAME)
    PyErr_Format(PyExc_ValueError, "DEEPBOF_CD1_ISA must be auto, avx2 or avx512, got %s",
                 wanted);
  else if (status == CD1_ISA_NO_AVX512)
    PyErr_SetString(PyExc_RuntimeError, "DEEPBOF_CD1_ISA=avx512 but this CPU has no "
                    "AVX-512F");
  return name;
}

static PyObject *py_isa(PyObject *self, PyObject *unused) {
  (void)self; (void)unused;
  const char *name = select_isa();
  return name ? PyUnicode_FromString(name) : NULL;
}

static PyObject *py_supported(PyObject *self, PyObject *unused) {
  (void)self; (void)unused;
  return PyBool_FromLong(cd1_cpu_supported());
}

static int check_buffer(Py_buffer *view, Py_ssize_t count, const char *name) {
  if (view->len != count * (Py_ssize_t)sizeof(float)) {
    PyErr_Format(PyExc_ValueError, "cd1 epoch: %s has %zd bytes, expected %zd float32",
                 name, view->len, count);
    return -1;
  }
  return 0;
}

static PyObject *py_uniform(PyObject *self, PyObject *args) {
  (void)self;
  unsigned long long seed0, seed1, start;
  Py_ssize_t count;
  Py_buffer out;
  if (!PyArg_ParseTuple(args, "KKKnw*", &seed0, &seed1, &start, &count, &out)) return NULL;
  if (out.len != count * (Py_ssize_t)sizeof(float)) {
    PyBuffer_Release(&out);
    PyErr_SetString(PyExc_ValueError, "uniform: output buffer size mismatch");
    return NULL;
  }
  uint32_t key[2], counter[4];
  philox_key_counter(seed0, seed1, key, counter);
  if (select_isa() == NULL) {
    PyBuffer_Release(&out);
    return NULL;
  }
#ifdef CD1_X86
  if (cd1_cpu_supported())
    uniform_range(key, counter, start, count, (float *)out.buf);
  else
#endif
    uniform_range_scalar(key, counter, start, count, (float *)out.buf);
  PyBuffer_Release(&out);
  Py_RETURN_NONE;
}

/* Test hook: out = σ(x) through the element-wise code of the epoch's path (isa()). */
static PyObject *py_logistic(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer in, out;
  if (!PyArg_ParseTuple(args, "y*w*", &in, &out)) return NULL;
  PyObject *result = NULL;
  Py_ssize_t count = in.len / (Py_ssize_t)sizeof(float);
  float *bias = NULL, *sums = NULL;
  if (in.len != out.len || in.len % (Py_ssize_t)sizeof(float) != 0 || count > INT32_MAX) {
    PyErr_SetString(PyExc_ValueError, "logistic: input and output must be float32 of one size");
    goto done;
  }
  if (!cd1_cpu_supported()) {
    PyErr_SetString(PyExc_RuntimeError, "logistic: this CPU lacks AVX2/FMA");
    goto done;
  }
  if (select_isa() == NULL) goto done;
#ifdef CD1_X86
  bias = aligned_floats(count);
  sums = aligned_floats(count);
  if (!bias || !sums) {
    PyErr_NoMemory();
    goto done;
  }
  memcpy(out.buf, in.buf, (size_t)in.len);
  logistic_rows((float *)out.buf, count, NR, bias, 1, (int)count, sums, NULL, NULL, NULL, 0,
                0, NULL);
  result = Py_None;
  Py_INCREF(result);
#endif
done:
  free(bias);
  free(sums);
  PyBuffer_Release(&in);
  PyBuffer_Release(&out);
  return result;
}

static PyObject *py_epoch(PyObject *self, PyObject *args, PyObject *kwargs) {
  (void)self;
  static char *keywords[] = {
      "batches", "kernel", "hidden_bias", "visible_bias", "kernel_increment",
      "hidden_bias_increment", "visible_bias_increment", "running_activation",
      "num_batches", "batch_size", "num_visible", "num_hidden", "seed", "step_offset",
      "learning_rate", "momentum", "weight_cost", "sparsity_decay", "sparsity_gain",
      "sparsity_target", "num_threads", NULL};
  Py_buffer views[8];
  Py_ssize_t num_batches, batch, visible, hidden, step_offset;
  unsigned long long seed;
  float lr, momentum, weight_cost, decay, gain, target;
  int threads;
  memset(views, 0, sizeof views);
  if (!PyArg_ParseTupleAndKeywords(
          args, kwargs, "y*w*w*w*w*w*w*w*nnnnKnffffffi", keywords, &views[0], &views[1],
          &views[2], &views[3], &views[4], &views[5], &views[6], &views[7], &num_batches,
          &batch, &visible, &hidden, &seed, &step_offset, &lr, &momentum, &weight_cost,
          &decay, &gain, &target, &threads))
    return NULL;
  PyObject *result = NULL;
  const char *names[8] = {"batches", "kernel", "hidden_bias", "visible_bias",
                          "kernel_increment", "hidden_bias_increment",
                          "visible_bias_increment", "running_activation"};
  Py_ssize_t counts[8] = {num_batches * batch * visible, visible * hidden, hidden, visible,
                          visible * hidden, hidden, visible, hidden};
  if (num_batches < 0 || batch <= 0 || visible <= 0 || hidden <= 0 ||
      batch > INT32_MAX / 4 || visible > INT32_MAX / 4 || hidden > INT32_MAX / 4) {
    PyErr_SetString(PyExc_ValueError, "cd1 epoch: invalid sizes");
    goto done;
  }
  for (int i = 0; i < 8; ++i)
    if (check_buffer(&views[i], counts[i], names[i]) != 0) goto done;
  if (!cd1_cpu_supported()) {
    PyErr_SetString(PyExc_RuntimeError,
                    "cd1 epoch: this CPU lacks AVX2/FMA; use the TensorFlow backend");
    goto done;
  }
  if (select_isa() == NULL) goto done;
#ifdef CD1_X86
  {
    epoch_state state;
    memset(&state, 0, sizeof state);
    state.batches = (const float *)views[0].buf;
    state.kernel = (float *)views[1].buf;
    state.hidden_bias = (float *)views[2].buf;
    state.visible_bias = (float *)views[3].buf;
    state.kernel_increment = (float *)views[4].buf;
    state.hidden_bias_increment = (float *)views[5].buf;
    state.visible_bias_increment = (float *)views[6].buf;
    state.running_activation = (float *)views[7].buf;
    state.num_batches = num_batches;
    state.batch = (int)batch;
    state.visible = (int)visible;
    state.hidden = (int)hidden;
    state.seed0 = seed;
    state.step_offset = step_offset;
    state.learning_rate = lr;
    state.momentum = momentum;
    state.weight_cost = weight_cost;
    state.sparsity_decay = decay;
    state.sparsity_gain = gain;
    state.sparsity_target = target;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_epoch(&state, threads);
    Py_END_ALLOW_THREADS
    if (status != 0) {
      PyErr_SetString(PyExc_MemoryError, "cd1 epoch: out of memory or threads");
      goto done;
    }
    double activation = 0.0;
    for (int t = 0; t < state.num_threads; ++t) activation += state.activation_sums[t];
    double steps = num_batches > 0 ? (double)num_batches : 1.0;
    result = Py_BuildValue("(dd)", state.error_sum / steps,
                           activation / (steps * (double)batch * (double)hidden));
  }
#endif
done:
  for (int i = 0; i < 8; ++i)
    if (views[i].obj) PyBuffer_Release(&views[i]);
  return result;
}

static PyMethodDef methods[] = {
    {"supported", py_supported, METH_NOARGS,
     "True if this CPU can run the native kernel (x86-64 with AVX2 and FMA)."},
    {"isa", py_isa, METH_NOARGS,
     "The code path epochs use now: 'avx512', 'avx2' (DEEPBOF_CD1_ISA=avx2 forces it) "
     "or 'none'."},
    {"uniform", py_uniform, METH_VARARGS,
     "uniform(seed0, seed1, start, count, out): elements [start, start+count) of "
     "tf.random.stateless_uniform's float32 stream for seed (seed0, seed1), by the "
     "Philox code of the path isa() names."},
    {"logistic", py_logistic, METH_VARARGS,
     "logistic(x, out): out = 1 / (1 + exp(-x)) for float32 buffers, through the "
     "epoch's element-wise code on the path isa() names (a test hook)."},
    {"epoch", (PyCFunction)(void (*)(void))py_epoch, METH_VARARGS | METH_KEYWORDS,
     "One CD-1 epoch over [num_batches, B, D] float32 minibatches, in place."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cd1",
                                    "Native CPU CD-1 epoch of the sparse RBM.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__cd1(void) { return PyModule_Create(&module); }
