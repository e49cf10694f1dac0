% deepbof's reference driver (ours, not the authors'): runs the authors' own
% functions from a checkout of github.com/juhannam/deepbof on a small, seeded
% bag-of-features-like set and saves every input, random draw and result, so that
% tests/test_authors_reference.py can replay the same updates through deepbof.
%
%   octave --no-gui --quiet --eval "authors_dir='/path/to/deepbof'; \
%       out_file='/tmp/updates.mat'; run('make_update_fixtures.m')"
%
% Part A: two RBMs of the song-level stack (train_rbm.m, init_rbm.m), binary-visible
% then ReLU-visible, 6 epochs each, batches of 100 in file order (330 examples: the
% last 30 dropped every epoch). Part B: 3 epochs of fine-tuning (tagatune_mlp.m) of the
% 2-hidden-layer network initialised as tagatune_dnn.m does it, then the test-time
% forward pass (tagatune_mlp_classify.m).

global DEEPBOF_DRAWS DEEPBOF_EPOCHS
here = fileparts(mfilename('fullpath'));
addpath(fullfile(authors_dir, 'rbm'));
addpath(fullfile(authors_dir, 'deepmat'));
addpath(authors_dir);
addpath(fullfile(here, 'shadow'));   % logging rand/randn, per-epoch hook: first on the path
warning('off', 'all');

D = 40; H = 24; T = 5; N = 330; NV = 60; NT = 50;
builtin('rand', 'seed', 7);
x = builtin('rand', D, N) .^ 3;            % in [0, 1], skewed like a bag-of-features
x_valid = builtin('rand', D, NV) .^ 3;
x_test = builtin('rand', D, NT) .^ 3;
% labels that depend on the data, so fine-tuning has something to learn
proj = builtin('rand', D, T) - 0.5;
y = double((x' * proj) > 0);
y_valid = double((x_valid' * proj) > 0);
y_test = double((x_test' * proj) > 0);

% ---- Part A: RBM 1 (binary visible, ReLU hidden) and RBM 2 (ReLU-ReLU) -------------
rbm_opts.hidden_layer = H; rbm_opts.scale = 1; rbm_opts.maxEpoch = 6;
rbm_opts.initMult = 0.01; rbm_opts.epsilon = 0.03; rbm_opts.minepsilon = 0.01;
rbm_opts.relu = 1; rbm_opts.sparsity = 0;

opts1 = rbm_opts; opts1.binaryInput = 1; opts1.weight_cost = 0.001;
params1 = init_rbm(D, opts1);
DEEPBOF_DRAWS = {};
randn('seed', 1); rand('seed', 1);
rbm1 = train_rbm(x, params1, '');
draws1 = DEEPBOF_DRAWS;

x2 = max(bsxfun(@plus, rbm1.weight * x, rbm1.hbias), 0);   % deep_feature_learning.m
opts2 = rbm_opts; opts2.binaryInput = 0; opts2.weight_cost = 0.01;
params2 = init_rbm(H, opts2);
DEEPBOF_DRAWS = {};
randn('seed', 1); rand('seed', 1);
rbm2 = train_rbm(x2, params2, '');
draws2 = DEEPBOF_DRAWS;

% ---- Part B: fine-tuning as tagatune_dnn.m sets it up ------------------------------
M = default_mlp([D, H, H, T]);
M.output.binary = 1;
M.hidden.use_tanh = 2;
M.valid_min_epochs = 10;
M.dropout.use = 1;
M.hook.per_epoch = {@record_epoch, {}};
M.learning.lrate = 1e-3; M.learning.lrate0 = 5000; M.learning.minibatch_sz = 128;
M.adadelta.use = 1; M.adadelta.epsilon = 1e-8; M.adadelta.momentum = 0.99;
M.noise.drop = 0; M.noise.level = 0;
M.iteration.n_epochs = 3;
M.biases{1} = rbm1.vbias; M.W{1} = rbm1.weight';
M.biases{2} = rbm2.vbias; M.W{2} = rbm2.weight';
init_W = M.W; init_biases = M.biases;
DEEPBOF_DRAWS = {}; DEEPBOF_EPOCHS = {};
M = tagatune_mlp(M, x', y, x_valid', y_valid, 0.1, 0);
mask_draws = DEEPBOF_DRAWS;
epochs = DEEPBOF_EPOCHS;
test_estimate = tagatune_mlp_classify(M, x_test', [], 1);

% ---- save -----------------------------------------------------------------------
out.x = x'; out.x_valid = x_valid'; out.x_test = x_test';
out.y = y; out.y_valid = y_valid; out.y_test = y_test;
cat_draws = @(d, k) cellfun(@(s) s.value, d(k), 'UniformOutput', false);
out.rbm1_init = draws1{1}.value * params1.initMult;            % [hidden, visible]
out.rbm1_noise = cat(3, cat_draws(draws1, 2:numel(draws1)){:});  % [hidden, batch, updates]
out.rbm1_weight = rbm1.weight; out.rbm1_hbias = rbm1.hbias; out.rbm1_vbias = rbm1.vbias;
out.rbm2_init = draws2{1}.value * params2.initMult;
out.rbm2_noise = cat(3, cat_draws(draws2, 2:numel(draws2)){:});
out.rbm2_weight = rbm2.weight; out.rbm2_hbias = rbm2.hbias; out.rbm2_vbias = rbm2.vbias;
out.rbm_epochs = rbm_opts.maxEpoch;
out.rbm1_lr = [params1.epsilon, params1.minepsilon];
out.rbm2_lr = [params2.epsilon, params2.minepsilon];
out.rbm_weight_costs = [params1.weightcost, params2.weightcost];
for l = 1:3
  out.(sprintf('init_W%d', l)) = init_W{l};
  out.(sprintf('init_b%d', l)) = init_biases{l + 1};
  for e = 1:numel(epochs)
    out.(sprintf('epoch%d_W%d', e, l)) = epochs{e}.W{l};
    out.(sprintf('epoch%d_b%d', e, l)) = epochs{e}.biases{l + 1};
  end
  out.(sprintf('best_W%d', l)) = M.W{l};
  out.(sprintf('best_b%d', l)) = M.biases{l + 1};
end
% dropout uniforms, in draw order: per update, hidden layer 1 then hidden layer 2
out.mask_uniforms = cat(1, cat_draws(mask_draws, 1:numel(mask_draws)){:});
out.mask_rows = cellfun(@(s) size(s.value, 1), mask_draws);
out.test_estimate = test_estimate;
out.octave_version = OCTAVE_VERSION;
save('-v7', out_file, '-struct', 'out');
fprintf(1, 'wrote %s: %d RBM-1 draws, %d RBM-2 draws, %d mask draws, %d epochs\n', ...
        out_file, numel(draws1), numel(draws2), numel(mask_draws), numel(epochs));
