"""``streamcheck doctor``: is this stack carrying the current-stream leak? Answered in seconds.

Why a behavioural probe and not a version table: vLLM forks, backports and pre-releases make the
version number a weak witness. The probe calls the installed vLLM's real ``current_stream()`` in
a child process (importing vLLM patches ``torch.cuda.set_stream``, so the doctor's own process
must never import it) and watches what it returns across threads, devices and stream switches.
Without a GPU, the child runs the same code against streamcheck's CPU stream simulator.

One job per module:

* :mod:`.hazards` — the three hazards the probe tells apart, their titles and fixes from the
  core's hazard catalogue.
* :mod:`.model` — verdicts and results, and their JSON form (shared by parent and child).
* :mod:`.environment` — Python, torch, CUDA, NCCL, vLLM, py-spy, read without side effects.
* :mod:`.streams` — stream back ends for the probes: real CUDA, or the simulator.
* :mod:`.fake_cuda` — the simulator installed as ``torch.cuda`` in the child, before vLLM.
* :mod:`.platform_shim` — makes vLLM take its CUDA branch when the child fakes CUDA.
* :mod:`.probes` — the three probes themselves.
* :mod:`.probe_main` — the child's entry point (``python -m streamcheck.doctor.probe_main``).
* :mod:`.runner` — the parent side: starts the child, bounds it in time, reads its answer.
* :mod:`.render` — rich tables for people.

Entry points: :func:`streamcheck.doctor.runner.diagnose` (used by ``streamcheck doctor``) and
:class:`streamcheck.doctor.model.DoctorReport`. Nothing is imported here, so the probe child
(a module of this package) starts without the parent-side machinery.
"""
