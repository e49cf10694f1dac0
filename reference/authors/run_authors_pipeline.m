% deepbof's driver (ours) for the authors' song-level stage on deepbof's
% bag-of-features: their RBM pretraining (init_rbm.m/train_rbm.m, as
% deep_feature_learning.m calls them) and their fine-tuning (default_mlp.m,
% tagatune_mlp.m, set up as tagatune_dnn.m does), then their test-time forward pass.
%
%   octave --no-gui --quiet --eval "authors_dir='…'; in_file='bof.mat'; \
%       out_file='result.mat'; pretrained=1; num_layers=3; seed=1; \
%       n_epochs=100; run('run_authors_pipeline.m')"
%
% in_file holds train_data/valid_data/test_data ([dims, clips], the raw
% bag-of-features) and train_label/valid_label/test_label ([clips, tags]);
% out_file gets test_estimate (pre-sigmoid outputs), the per-epoch validation
% AUC-tag (aroc_hist is printed by tagatune_mlp) and the best epoch's weights.

addpath(fullfile(authors_dir, 'rbm'));
addpath(fullfile(authors_dir, 'deepmat'));
addpath(authors_dir);
here = fileparts(mfilename('fullpath'));
addpath(fullfile(here, 'hooks'));
warning('off', 'all');
load(in_file);
if ~exist('weight_costs', 'var'); weight_costs = [0.001 0.01 0.1]; end
if ~exist('rbm_epochs', 'var'); rbm_epochs = 200; end

rand('seed', seed); randn('seed', seed);   % run_tagatune_dnn.m: rand('seed',1)
H = 512;
rbm_opts.hidden_layer = H; rbm_opts.scale = 1; rbm_opts.maxEpoch = rbm_epochs;
rbm_opts.initMult = 0.01; rbm_opts.epsilon = 0.03; rbm_opts.minepsilon = 0.01;
rbm_opts.relu = 1; rbm_opts.sparsity = 0;

layers = [size(train_data, 1), H * ones(1, num_layers), size(train_label, 2)];
M = default_mlp(layers);
M.output.binary = 1; M.hidden.use_tanh = 2; M.valid_min_epochs = 10;
M.dropout.use = 1; M.hook.per_epoch = {@record_epoch_auc, {}};
M.learning.lrate = 1e-3; M.learning.lrate0 = 5000; M.learning.minibatch_sz = 128;
M.adadelta.use = 1; M.adadelta.epsilon = 1e-8; M.adadelta.momentum = 0.99;
M.noise.drop = 0; M.noise.level = 0; M.iteration.n_epochs = n_epochs;

if pretrained
  data = train_data;
  for j = 1:num_layers
    opts = rbm_opts; opts.binaryInput = (j == 1); opts.weight_cost = weight_costs(j);
    params = init_rbm(size(data, 1), opts);
    randn('seed', 1); rand('seed', 1);      % deep_feature_learning.m, before each layer
    rbm = train_rbm(data, params, '');
    M.biases{j} = rbm.vbias;                 % tagatune_dnn.m
    M.W{j} = rbm.weight';
    data = max(bsxfun(@plus, rbm.weight * data, rbm.hbias), 0);
  end
  rand('seed', seed); randn('seed', seed);
end

tic;
M = tagatune_mlp(M, train_data', train_label, valid_data', valid_label, 0.1, 0);
seconds = toc;
test_estimate = tagatune_mlp_classify(M, test_data', [], 1);
valid_estimate = tagatune_mlp_classify(M, valid_data', [], 1);
save('-v7', out_file, 'test_estimate', 'valid_estimate', 'seconds');
fprintf(1, 'wrote %s (%.0f s of fine-tuning)\n', out_file, seconds);
